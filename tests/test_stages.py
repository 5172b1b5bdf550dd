import json

import numpy as np
import pytest

from tests.helpers.images import noisy_image, png_bytes, write_images
from tests.helpers.paths import load_script
from tests.helpers.runs import make_run
from workers.io.imageio import decode_png
from workers.io.submission import grey_subsample
from workers.ops.denoise import DenoiseSpec
from workers.run.aggregate import aggregate_stage
from workers.run.context import StageContext
from workers.run.keys import RunKeys, RunProgress
from workers.run.manifest import PipelineSpec
from workers.run.presets import build_pipeline
from workers.run.stages import SERIAL_LOADS, GpuSchedule, denoise_stage, upscale_stage


@pytest.fixture
def ctx(settings):
    return StageContext(settings.replace(gpu_batch_size=2, cpu_batch_size=2))


def test_denoise_writes_output_and_is_idempotent(ctx, tmp_path):
    names = write_images(tmp_path / "in", 1)
    make_run(ctx.storage, tmp_path / "in", names)
    first = denoise_stage(ctx, "r1", names[0])
    assert first.status == "denoised" and first.size == (32, 24)
    key = RunKeys("r1").denoised(names[0])
    before = ctx.storage.get(key)
    assert denoise_stage(ctx, "r1", names[0]).reason == "already denoised"
    assert ctx.storage.get(key) == before


def test_denoise_records_bad_and_missing_inputs_as_failed(ctx, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "bad.png").write_bytes(b"nope")
    make_run(ctx.storage, folder, ["bad.png", "gone.png"])
    assert denoise_stage(ctx, "r1", "bad.png").status == "failed"
    assert denoise_stage(ctx, "r1", "gone.png").status == "failed"
    record = json.loads(ctx.storage.get(RunKeys("r1").failed("gone.png")))
    assert record["stage"] == "denoise" and "missing" in record["reason"]
    assert RunProgress.read(ctx.storage, "r1").failed == {"bad", "gone"}


def test_upscale_batches_same_sizes_and_writes_image_then_row(ctx, tmp_path):
    folder = tmp_path / "in"
    names = write_images(folder, 3) + write_images(folder, 1, width=16, height=16, prefix="small_")
    make_run(ctx.storage, folder, names)
    for name in names:
        denoise_stage(ctx, "r1", name)
    outcomes = upscale_stage(ctx, "r1", names)
    assert [o.status for o in outcomes] == ["done"] * 4
    keys = RunKeys("r1")
    for name in names:
        hr = decode_png(ctx.storage.get(keys.sr(name)))
        row = ctx.storage.get(keys.row(name)).decode().strip().split(",")
        assert np.array_equal(np.array(row[1:], int), grey_subsample(hr))
    batches = [json.loads(ctx.storage.get(keys.meta(n, "upscale")))["batch"] for n in names]
    assert batches == [2, 2, 1, 1]  # gpu_batch_size=2: the 3 same-size images go as 2 + 1
    assert {o.status for o in upscale_stage(ctx, "r1", names)} == {"skipped"}


def test_upscale_without_a_denoised_image_denoises_itself(ctx, tmp_path):
    names = write_images(tmp_path / "in", 1)
    make_run(ctx.storage, tmp_path / "in", names)
    assert upscale_stage(ctx, "r1", names)[0].status == "done"
    assert ctx.storage.exists(RunKeys("r1").denoised(names[0]))


def test_seed_compat_pipeline_resizes_odd_sizes_to_multiple_of_8(ctx, tmp_path):
    folder = tmp_path / "in"
    names = write_images(folder, 1, width=13, height=9)
    make_run(ctx.storage, folder, names, pipeline=build_pipeline("seed"))
    denoise_stage(ctx, "r1", names[0])
    upscale_stage(ctx, "r1", names)
    assert decode_png(ctx.storage.get(RunKeys("r1").sr(names[0]))).shape == (32, 48, 3)


def test_wrong_width_against_sample_is_a_failure_but_keeps_the_image(ctx, tmp_path):
    names = write_images(tmp_path / "in", 1)
    make_run(ctx.storage, tmp_path / "in", names, expected_columns=5120)
    denoise_stage(ctx, "r1", names[0])
    outcome = upscale_stage(ctx, "r1", names)[0]
    assert outcome.status == "failed" and "5120 columns" in outcome.reason
    assert ctx.storage.exists(RunKeys("r1").sr(names[0]))


def test_aggregate_waits_for_pending_then_writes_in_manifest_order(ctx, tmp_path):
    folder = tmp_path / "in"
    names = write_images(folder, 3)
    (folder / "broken.png").write_bytes(b"")
    order = [names[2], "broken.png", names[0], names[1]]
    make_run(ctx.storage, folder, order)
    assert not aggregate_stage(ctx, "r1").complete
    for name in order:
        denoise_stage(ctx, "r1", name)
    upscale_stage(ctx, "r1", names)
    result = aggregate_stage(ctx, "r1")
    assert (result.complete, result.written, result.failed, result.pending) == (True, 3, 1, 0)
    lines = ctx.storage.get(RunKeys("r1").submission).decode().splitlines()
    assert [line.split(",")[0] for line in lines[1:]] == ["gt_00003", "gt_00001", "gt_00002"]
    assert lines[0].count(",") == 32 * 4 * 24 * 4 // 8
    failures = json.loads(ctx.storage.get(RunKeys("r1").failures))
    assert [f["name"] for f in failures] == ["broken.png"]
    assert aggregate_stage(ctx, "r1").as_dict() == result.as_dict()  # idempotent


def test_partial_aggregate_lists_pending(ctx, tmp_path):
    names = write_images(tmp_path / "in", 2)
    make_run(ctx.storage, tmp_path / "in", names)
    result = aggregate_stage(ctx, "r1", allow_partial=True)
    assert result.complete and result.written == 0 and result.pending == 2


def test_without_sample_the_most_common_width_wins(ctx, tmp_path):
    folder = tmp_path / "in"
    (folder).mkdir()
    (folder / "a_tiny.png").write_bytes(png_bytes(noisy_image(2, 2)))
    names = ["a_tiny.png", *write_images(folder, 2)]
    make_run(ctx.storage, folder, names)
    for name in names:
        denoise_stage(ctx, "r1", name)
    upscale_stage(ctx, "r1", names)
    result = aggregate_stage(ctx, "r1")
    assert (result.written, result.failed) == (2, 1)


def test_denoising_fused_into_the_gpu_stage_gives_identical_outputs(ctx, tmp_path):
    """The GPU placement (PyTorch NL-means, here on the CPU) matches the CPU stage (OpenCV) byte for byte."""
    import dataclasses

    from workers.run.manifest import PipelineSpec

    folder = tmp_path / "in"
    names = write_images(folder, 3) + ["broken.png"]
    (folder / "broken.png").write_bytes(b"not an image")
    make_run(ctx.storage, folder, names, run_id="cpu")
    make_run(ctx.storage, folder, names, run_id="gpu", pipeline=dataclasses.replace(PipelineSpec(), denoise_on="gpu"))
    for name in names:
        denoise_stage(ctx, "cpu", name)
    upscale_stage(ctx, "cpu", names)
    fused = upscale_stage(ctx, "gpu", names)  # no CPU stage at all
    assert [o.status for o in fused] == ["done", "done", "done", "failed"]
    for name in names[:3]:
        for key in ("denoised", "sr", "row"):
            assert ctx.storage.get(getattr(RunKeys("gpu"), key)(name)) == ctx.storage.get(getattr(RunKeys("cpu"), key)(name))
    assert aggregate_stage(ctx, "gpu").written == 3


def test_gpu_batches_are_bounded_by_a_pixel_budget_not_only_a_count(settings, tmp_path):
    """GPU_BATCH_SIZE alone put eight 16 MP images into one forward pass; GPU_BATCH_PIXELS caps the pixels."""
    ctx = StageContext(settings.replace(gpu_batch_size=8, cpu_batch_size=8, gpu_batch_pixels=2 * 32 * 24))
    names = write_images(tmp_path / "in", 3)
    make_run(ctx.storage, tmp_path / "in", names, pipeline=PipelineSpec(upscaler="bicubic"))
    assert [o.status for o in upscale_stage(ctx, "r1", names)] == ["done"] * 3
    batches = [json.loads(ctx.storage.get(RunKeys("r1").meta(n, "upscale")))["batch"] for n in names]
    assert batches == [2, 2, 1]


def test_an_image_above_the_pixel_budget_runs_alone(settings):
    from workers.run.stages import batch_size

    tight = settings.replace(gpu_batch_size=8, cpu_batch_size=4, gpu_batch_pixels=1000)
    assert (batch_size(tight, 100), batch_size(tight, 400), batch_size(tight, 5000)) == (8, 2, 1)
    assert (batch_size(tight, 100, on_cpu=True), batch_size(tight, 400, on_cpu=True)) == (4, 2)


@pytest.mark.slow
def test_the_gpu_stage_of_large_images_needs_under_twice_their_output_in_memory(tmp_path):
    """The 4x output was copied between steps (a stack of the batch, Pillow's 4-byte copies for the grey
    values and for the PNG, the whole PNG, the whole CSV row; with a model a float output too): about 4x
    one output with bicubic, 8x with a model. Two 4 MP images, as benchmarks/memory.py measures them."""
    memory = load_script("memory")
    names = memory.write_stage_run(tmp_path, 4, "bicubic")
    result = memory.run_child("stage", {"store": str(tmp_path), "names": names, "weights": "", "device": "cpu",
                                        "threads": 0})
    width, height = memory.size_for(4)
    output_mib = 16 * width * height * 3 / 2**20
    assert result["peak_mib"] - result["before_mib"] < 2 * output_mib, (result, output_mib)


def test_a_cpu_model_runs_batch_1_by_default(settings, tmp_path):
    """On a CPU a batch only runs the same convolutions over more pixels, and batch 1 measured fastest."""
    ctx = StageContext(settings)
    names = write_images(tmp_path / "in", 3)
    make_run(ctx.storage, tmp_path / "in", names, pipeline=PipelineSpec(denoise=DenoiseSpec(method="none")))
    assert [o.status for o in upscale_stage(ctx, "r1", names)] == ["done"] * 3
    assert [json.loads(ctx.storage.get(RunKeys("r1").meta(n, "upscale")))["batch"] for n in names] == [1, 1, 1]


@pytest.mark.parametrize("schedule", [GpuSchedule(True, True), GpuSchedule(True, False), SERIAL_LOADS],
                         ids=["overlapped", "taking-turns", "serial-loads"])
def test_every_gpu_schedule_stores_the_same_bytes(ctx, tmp_path, schedule):
    """Where the I/O runs changes nothing stored; missing and skipped images keep their outcomes, in order."""
    folder = tmp_path / "in"
    names = write_images(folder, 3) + write_images(folder, 2, width=16, height=16, prefix="small_")
    make_run(ctx.storage, folder, [*names, "gone.png"], pipeline=PipelineSpec(denoise=DenoiseSpec(method="none")))
    reference = StageContext(ctx.settings.replace(storage_url=str(tmp_path / "reference")))
    make_run(reference.storage, folder, [*names, "gone.png"], pipeline=PipelineSpec(denoise=DenoiseSpec(method="none")))
    expected = upscale_stage(reference, "r1", [*names, "gone.png"], GpuSchedule(parallel_loads=False, overlap=False))
    upscale_stage(ctx, "r1", names[:1])  # one image already done: skipped below
    outcomes = upscale_stage(ctx, "r1", [*names, names[0], "gone.png"], schedule)
    assert [o.name for o in outcomes] == [*names, "gone.png"]
    assert [o.status for o in outcomes] == ["skipped", "done", "done", "done", "done", "failed"]
    assert [o.status for o in expected] == ["done"] * 5 + ["failed"]
    for name in names:
        for key in (RunKeys("r1").sr(name), RunKeys("r1").row(name)):
            assert ctx.storage.get(key) == reference.storage.get(key)


def test_begin_upscale_returns_while_the_last_outputs_are_still_stored(ctx, tmp_path, monkeypatch):
    """What lets a GPU worker start its next batch while this one uploads: computing is done when
    begin_upscale returns, storing is not waited for until outcomes()."""
    import threading

    from workers.run import stages

    names = write_images(tmp_path / "in", 2)
    make_run(ctx.storage, tmp_path / "in", names, pipeline=PipelineSpec(denoise=DenoiseSpec(method="none")))
    release = threading.Event()
    real = stages._store_upscaled

    def held_store(*args):
        release.wait(timeout=60)
        return real(*args)

    monkeypatch.setattr(stages, "_store_upscaled", held_store)
    pending = stages.begin_upscale(ctx, "r1", names, GpuSchedule(parallel_loads=True, overlap=True))
    assert pending.computed == names and not ctx.storage.exists(RunKeys("r1").row(names[0]))
    release.set()
    assert [o.status for o in pending.outcomes()] == ["done", "done"]


def test_a_pipeline_with_nothing_for_the_cpu_starts_at_the_gpu_stage_with_identical_outputs(ctx, tmp_path):
    """The queue plan for a pipeline without a denoiser or a tone curve (the learned preset's): the GPU
    stage reads the input itself. Against the old plan (the CPU stage's decode and PNG round trip
    first): the same 4x images, rows and submission, byte for byte, and one stored object fewer."""
    no_cpu_work = PipelineSpec(denoise=DenoiseSpec(method="none"))
    assert no_cpu_work.first_stage == "upscale" and PipelineSpec().first_stage == "denoise"
    folder = tmp_path / "in"
    names = write_images(folder, 3) + ["broken.png"]
    (folder / "broken.png").write_bytes(b"not an image")
    make_run(ctx.storage, folder, names, run_id="old", pipeline=no_cpu_work)
    make_run(ctx.storage, folder, names, run_id="new", pipeline=no_cpu_work)
    for name in names:
        denoise_stage(ctx, "old", name)
    upscale_stage(ctx, "old", names)
    direct = upscale_stage(ctx, "new", names)
    assert [o.status for o in direct] == ["done", "done", "done", "failed"]
    old, new = RunKeys("old"), RunKeys("new")
    for name in names[:3]:
        assert ctx.storage.get(new.sr(name)) == ctx.storage.get(old.sr(name))
        assert ctx.storage.get(new.row(name)) == ctx.storage.get(old.row(name))
        assert ctx.storage.exists(old.denoised(name)) and not ctx.storage.exists(new.denoised(name))
    aggregate_stage(ctx, "old")
    aggregate_stage(ctx, "new")
    assert ctx.storage.get(new.submission) == ctx.storage.get(old.submission)
