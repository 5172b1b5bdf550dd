"""The in-process runner: one image's trouble ends that image, never the run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from producer.embedded import run_embedded
from producer.planning import prepare_run
from tests.helpers.images import png_bytes, write_images
from workers.errors import DeviceOutOfMemoryError, StorageUnavailableError
from workers.run import policy, stages
from workers.run.context import StageContext
from workers.run.keys import RunKeys
from workers.run.manifest import PipelineSpec

BICUBIC = PipelineSpec(upscaler="bicubic")  # no model: the stages run in a moment


@pytest.fixture
def ctx(settings, monkeypatch):
    monkeypatch.setattr(policy, "backoff_s", lambda n: 0)  # the schedule is the workers'; here, no waiting
    return StageContext(settings.replace(task_max_retries=2))


def test_an_image_that_never_fits_ends_failed_after_its_retries_and_the_run_goes_on(ctx, tmp_path, monkeypatch):
    """A DeviceOutOfMemoryError on an image that can never fit stopped the whole run, on every re-run."""
    folder = tmp_path / "in"
    names = write_images(folder, 3)
    (folder / "test_00009_huge.png").write_bytes(png_bytes(np.full((24, 32, 3), 40, np.uint8)))
    real, tries = stages.upscale_images, []

    def upscale_images(ctx, images, pipeline):  # a flat image never fits
        if any((image == image.flat[0]).all() for image in images):
            tries.append(len(images))
            raise DeviceOutOfMemoryError("out of memory even with 64-pixel tiles")
        return real(ctx, images, pipeline)

    monkeypatch.setattr(stages, "upscale_images", upscale_images)
    plan = prepare_run(ctx.settings, ctx.storage, str(folder), BICUBIC)
    result = run_embedded(ctx, plan, show_progress=False)
    assert (result.written, result.failed, result.pending) == (3, 1, 0)
    failure = json.loads(ctx.storage.get(RunKeys(plan.run_id).failed("test_00009_huge.png")))
    assert failure["reason"] == "gave up after 3 transient errors: out of memory even with 64-pixel tiles"
    assert tries.count(1) == 3  # tried alone after its batch, then retried twice
    assert all(ctx.storage.exists(RunKeys(plan.run_id).row(name)) for name in names)


def test_a_passing_storage_error_in_the_cpu_stage_is_retried_not_fatal(ctx, tmp_path, monkeypatch):
    folder = tmp_path / "in"
    names = write_images(folder, 2)
    real, failed = stages.read_input, []

    def read_input(ctx, manifest, name):  # the first read of one input fails
        if name == names[0] and not failed:
            failed.append(name)
            raise StorageUnavailableError("S3 unreachable for a moment")
        return real(ctx, manifest, name)

    monkeypatch.setattr(stages, "read_input", read_input)
    plan = prepare_run(ctx.settings, ctx.storage, str(folder), BICUBIC)
    result = run_embedded(ctx, plan, show_progress=False)
    assert (result.written, result.failed) == (2, 0) and failed == [names[0]]
