"""workers.run.context: a worker's long-lived stage context follows its runs' manifests."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from producer.planning import prepare_run
from workers.io.imageio import decode_png
from workers.io.storage import LocalStorage
from workers.ops.denoise import DenoiseSpec, denoise
from workers.run import stages
from workers.run.context import StageContext
from workers.run.keys import RunKeys
from workers.run.manifest import PipelineSpec
from workers.run.stages import ManifestReplacedError, denoise_stage
from workers.settings import Settings

PIPELINE = PipelineSpec()  # standard: NL-means on the CPU stage (no model is loaded by that stage)


def image(value: int) -> np.ndarray:
    rng = np.random.default_rng(value)
    return np.clip(rng.normal(value, 8, (24, 32, 3)), 0, 255).astype(np.uint8)


@pytest.fixture
def batches(tmp_path):
    """Two sources: batch2 has another picture under batch1's name, and a name batch1 lacks."""
    src1, src2 = tmp_path / "batch1", tmp_path / "batch2"
    src1.mkdir()
    src2.mkdir()
    Image.fromarray(image(40)).save(src1 / "a.png")
    Image.fromarray(image(200)).save(src2 / "a.png")
    Image.fromarray(image(120)).save(src2 / "b.png")
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"never loaded: the CPU stage runs no model")
    settings = Settings(storage_url=str(tmp_path / "store"), weights=str(weights))
    return settings, LocalStorage(tmp_path / "store"), src1, src2


def test_a_run_id_reused_for_another_source_is_processed_from_the_new_source(batches):
    """`producer enqueue SRC2 --run NAME` after SRC1: a worker that kept its context between the two
    enqueues reads the new manifest, so b.png is processed and a.png is redone from SRC2's bytes."""
    settings, store, src1, src2 = batches
    prepare_run(settings, store, str(src1), PIPELINE, run_id="nightly")
    worker = StageContext(settings, store)  # one per worker process, for its whole life
    assert denoise_stage(worker, "nightly", "a.png").status == "denoised"
    prepare_run(settings, store, str(src2), PIPELINE, run_id="nightly")
    assert denoise_stage(worker, "nightly", "b.png").status == "denoised"
    assert denoise_stage(worker, "nightly", "a.png").status == "denoised"
    stored = decode_png(store.get(RunKeys("nightly").denoised("a.png")))
    assert np.array_equal(stored, denoise(image(200), DenoiseSpec()))
    assert not store.exists(RunKeys("nightly").failed("b.png"))


def test_an_output_made_while_its_run_was_enqueued_again_is_not_kept(batches, monkeypatch):
    """The run is enqueued again for another source while the stage has the old source's bytes in
    hand: what it made is deleted, and the retry reads the new manifest."""
    settings, store, src1, src2 = batches
    prepare_run(settings, store, str(src1), PIPELINE, run_id="nightly")
    worker = StageContext(settings, store)
    real = stages.read_input

    def read_then_enqueue_again(ctx, manifest, name):
        data = real(ctx, manifest, name)
        prepare_run(settings, store, str(src2), PIPELINE, run_id="nightly")
        return data

    monkeypatch.setattr(stages, "read_input", read_then_enqueue_again)
    with pytest.raises(ManifestReplacedError, match="enqueued again"):
        denoise_stage(worker, "nightly", "a.png")
    assert not store.exists(RunKeys("nightly").denoised("a.png"))
    monkeypatch.setattr(stages, "read_input", real)
    assert denoise_stage(worker, "nightly", "a.png").status == "denoised"
    stored = decode_png(store.get(RunKeys("nightly").denoised("a.png")))
    assert np.array_equal(stored, denoise(image(200), DenoiseSpec()))
