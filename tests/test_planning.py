"""Planning a run: what an enqueue records about its inputs, and what it leaves to do."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from producer.embedded import run_embedded
from producer.planning import prepare_run
from tests.helpers.images import noisy_image, png_bytes, write_images
from workers.run.context import StageContext
from workers.run.keys import RunKeys
from workers.run.manifest import PipelineSpec, load_manifest, save_manifest
from workers.run.started import read_start

BICUBIC = PipelineSpec(upscaler="bicubic")  # no model: the stages run in a moment


@pytest.fixture
def ctx(settings):
    return StageContext(settings)


def finished_run(ctx, folder):
    plan = prepare_run(ctx.settings, ctx.storage, str(folder), BICUBIC)
    run_embedded(ctx, plan, show_progress=False)
    return plan


def rows(ctx, run_id, names):
    keys = RunKeys(run_id)
    return {name: ctx.storage.get(keys.row(name)) for name in names}


def test_a_changed_input_is_redone_not_mistaken_for_its_finished_predecessor(ctx, settings, tmp_path):
    """test_a.png replaced by another test_a.jpg, test_b.png rewritten: same stems, other bytes."""
    folder = tmp_path / "in"
    write_images(folder, 3, prefix="test_")
    first = finished_run(ctx, folder)
    before = rows(ctx, first.run_id, ["test_00001.png", "test_00002.png", "test_00003.png"])
    kept_mtime = (tmp_path / "store" / "runs" / first.run_id / "sr" / "test_00003.png").stat().st_mtime_ns

    (folder / "test_00001.png").unlink()
    (folder / "test_00001.jpg").write_bytes(png_bytes(noisy_image(32, 24, seed=41), fmt="JPEG"))
    (folder / "test_00002.png").write_bytes(png_bytes(noisy_image(32, 24, seed=42)))
    again = prepare_run(settings, ctx.storage, str(folder), BICUBIC)
    assert again.run_id == first.run_id  # same run, resumed: keys of unchanged inputs stay
    assert again.finished == ("test_00003.png",)
    assert set(again.to_denoise) == {"test_00001.jpg", "test_00002.png"}
    run_embedded(ctx, again, show_progress=False)

    after = rows(ctx, first.run_id, ["test_00001.jpg", "test_00002.png", "test_00003.png"])
    fresh_ctx = StageContext(settings.replace(storage_url=str(tmp_path / "fresh")))
    fresh = rows(fresh_ctx, finished_run(fresh_ctx, folder).run_id, list(after))
    assert after == fresh  # what a run that never saw the old files writes
    assert after["test_00001.jpg"] != before["test_00001.png"] and after["test_00002.png"] != before["test_00002.png"]
    assert (tmp_path / "store" / "runs" / first.run_id / "sr" / "test_00003.png").stat().st_mtime_ns == kept_mtime


def test_an_input_removed_then_back_changed_is_redone(ctx, settings, tmp_path):
    folder = tmp_path / "in"
    write_images(folder, 2)
    first = finished_run(ctx, folder)
    (folder / "test_00002.png").unlink()
    finished_run(ctx, folder)  # the run without it: its outputs stay behind
    (folder / "test_00002.png").write_bytes(png_bytes(noisy_image(32, 24, seed=7)))
    again = prepare_run(settings, ctx.storage, str(folder), BICUBIC)
    assert again.run_id == first.run_id and again.to_denoise == ("test_00002.png",)


def test_a_run_recorded_before_fingerprints_resumes_without_redoing_anything(ctx, settings, tmp_path):
    folder = tmp_path / "in"
    names = write_images(folder, 2)
    first = finished_run(ctx, folder)
    legacy = dataclasses.replace(load_manifest(ctx.storage, first.run_id), fingerprints={})
    save_manifest(ctx.storage, legacy)
    again = prepare_run(settings, ctx.storage, str(folder), BICUBIC)
    assert again.finished == tuple(names) and not again.to_denoise
    assert set(load_manifest(ctx.storage, first.run_id).fingerprints) == set(names)  # recorded from now on


def test_every_enqueue_records_its_start_and_what_it_left_to_do(ctx, settings, tmp_path):
    """The report's clock starts at the latest enqueue, whichever stages the pipeline has."""
    folder = tmp_path / "in"
    write_images(folder, 3)
    before = datetime.now(UTC)
    first = finished_run(ctx, folder)
    start = read_start(ctx.storage, first.run_id)
    assert (start.remaining, start.finished) == (3, 0)
    assert before.timestamp() - 0.002 <= start.timestamp <= datetime.now(UTC).timestamp()
    again = prepare_run(settings, ctx.storage, str(folder), BICUBIC)
    resumed = read_start(ctx.storage, again.run_id)
    assert (resumed.remaining, resumed.finished) == (0, 3) and resumed.timestamp >= start.timestamp
