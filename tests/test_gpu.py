"""Every CUDA branch, on a real card: reduced precision against fp32, the non-finite recompute,
channels_last, real out-of-memory errors driving the split and the tiling, NL-means on the device,
the model cache on the device, training with the gradient scaler, a broken CUDA context, and a whole
embedded run with DEVICE=cuda against the CPU one.

Marked ``gpu``: without a CUDA device they are skipped, and say so (``tests/conftest.py``).
``scripts/device-check`` runs them on a lent card.

Tolerances, stated once (measured on a CPU with bf16/fp16 weights against fp32, 256x160 and 64x40
inputs: RRDB bf16 54 dB, max 2 levels; fp16 63 dB, max 1; the compact model bf16 55 dB, max 3; a card
accumulates differently, hence the margin):
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.helpers.images import noisy_image
from tests.helpers.models import make_random_compact, stub_upscaler
from tests.helpers.paths import DATASET, REPO
from tests.helpers.runs import run_producer
from workers.ops.metrics import psnr

pytestmark = pytest.mark.gpu

MIN_PSNR_DB = {torch.float16: 50.0, torch.bfloat16: 45.0}  # of a reduced-precision output against fp32
MAX_LEVELS = {torch.float16: 6, torch.bfloat16: 12}  # largest difference of one 8-bit value
SUBMISSION_MIN_PSNR_DB = 45.0  # an embedded run's submission values on CUDA against the CPU run's
SHIPPED = REPO / "models" / "lowlight-compact.safetensors"


def assert_within_tolerance(ours: np.ndarray, reference: np.ndarray, dtype: torch.dtype) -> None:
    assert ours.shape == reference.shape
    difference = np.abs(ours.astype(int) - reference.astype(int)).max()
    assert psnr(ours, reference) >= MIN_PSNR_DB[dtype] and difference <= MAX_LEVELS[dtype], (
        f"{dtype}: {psnr(ours, reference):.2f} dB, max {difference} levels")


@pytest.fixture
def exact_fp32():
    """fp32 references without TF32 (cuDNN and cuBLAS round fp32 inputs to 10 bits by default)."""
    cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul


@pytest.fixture
def memory_cap():
    """``cap(bytes)``: what torch may allocate on the card from now on (set_per_process_memory_fraction)."""
    total = torch.cuda.get_device_properties(0).total_memory

    def cap(limit: int) -> None:
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(limit / total)

    yield cap
    torch.cuda.set_per_process_memory_fraction(1.0)
    torch.cuda.empty_cache()


def images(count: int, width: int, height: int) -> np.ndarray:
    return np.stack([noisy_image(width, height, seed=s) for s in range(count)])


# -- precision ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("model", ["rrdb", "compact"])
def test_reduced_precision_matches_fp32_within_the_stated_tolerance(weights_path, exact_fp32, model, dtype):
    from workers.ops.upscale import load_upscaler

    path = weights_path if model == "rrdb" else SHIPPED
    batch = images(2, 256, 160)
    reference = load_upscaler(path, "cuda", "fp32").upscale(batch)
    upscaler = load_upscaler(path, "cuda", {torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype])
    assert upscaler.dtype is dtype
    assert_within_tolerance(upscaler.upscale(batch), reference, dtype)


def test_auto_precision_is_bf16_on_a_card_that_has_it():
    from workers.ops.upscale import load_upscaler

    upscaler = load_upscaler(SHIPPED, "cuda")
    expected = torch.bfloat16 if torch.cuda.get_device_capability()[0] >= 8 else torch.float16
    assert upscaler.dtype is expected and next(upscaler.descriptor.model.parameters()).dtype is expected


def test_an_fp16_overflow_is_recomputed_in_fp32(exact_fp32):
    """The stub multiplies by 1e6 and divides again: +inf in fp16, exact in fp32 (tests/helpers/models.py)."""
    image = noisy_image(13, 11)[None]
    fp32 = stub_upscaler(torch.float32)
    fp16 = stub_upscaler(torch.float16)
    on_card = [replace(u, device=torch.device("cuda")) for u in (fp32, fp16)]
    for upscaler in on_card:
        upscaler.descriptor.model.cuda()
    assert np.array_equal(on_card[1].upscale(image), on_card[0].upscale(image))
    assert np.array_equal(on_card[1].upscale(image, tta=True), on_card[0].upscale(image))


def test_channels_last_on_the_card_matches_nchw(exact_fp32):
    from workers.ops.upscale import load_upscaler

    upscaler = load_upscaler(SHIPPED, "cuda", "fp32")
    model = upscaler.descriptor.model
    assert next(p for p in model.parameters() if p.dim() == 4).is_contiguous(memory_format=torch.channels_last)
    batch = images(2, 64, 40)
    x = torch.from_numpy(batch).cuda().permute(0, 3, 1, 2).float().div(255)
    with torch.inference_mode():
        nchw = model.to(memory_format=torch.contiguous_format)(x.contiguous())
    model.to(memory_format=torch.channels_last)
    expected = nchw.clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    assert np.abs(upscaler.upscale(batch).astype(int) - expected.astype(int)).max() <= 1


def test_torch_compile_and_cudnn_benchmark_give_the_same_output():
    from workers.ops.upscale import load_upscaler

    batch = images(2, 64, 40)
    eager = load_upscaler(SHIPPED, "cuda").upscale(batch)
    compiled = load_upscaler(SHIPPED, "cuda", compile_mode="default", cudnn_benchmark=True)
    try:
        assert_within_tolerance(compiled.upscale(batch), eager, compiled.dtype)
    finally:
        torch.backends.cudnn.benchmark = False


# -- out of memory, for real ---------------------------------------------------------------------------------


def test_a_real_out_of_memory_error_splits_the_batch_then_tiles(memory_cap, caplog):
    """A batch of four 1 MP images under a 400 MiB cap: the batch, then its halves, then one image run
    out of memory for real (one needs about 700 MB in bf16); tiles fit. The result is the uncapped one up to the tile seams."""
    from workers.ops.upscale import TilePolicy, load_upscaler

    upscaler = load_upscaler(SHIPPED, "cuda", tiles=TilePolicy(max_pixels=10**8, size=256, overlap=16))
    batch = images(4, 1024, 1024)
    uncapped = np.concatenate([upscaler.upscale(batch[i : i + 1]) for i in range(4)])
    memory_cap(400 << 20)
    capped = upscaler.upscale(batch)
    assert "splitting" in caplog.text and "tiling" in caplog.text
    for ours, reference in zip(capped, uncapped, strict=True):
        assert psnr(ours, reference) > 40


def test_device_nlm_tiles_after_a_real_out_of_memory_error_with_the_same_result(memory_cap):
    from workers.ops.denoise import DenoiseSpec, denoise_on_device

    batch = images(2, 640, 480)
    whole = denoise_on_device(batch, DenoiseSpec(), "cuda", max_pixels=10**8)
    memory_cap(512 << 20)
    assert np.array_equal(denoise_on_device(batch, DenoiseSpec(), "cuda", max_pixels=10**8), whole)


def test_device_nlm_equals_opencv_and_the_cpu_port():
    from tests.helpers.images import opencv_nlm, synthetic
    from workers.ops.nlm_torch import nlm_colored_torch

    batch = np.stack([synthetic(256, 160, 20, seed) for seed in range(3)])
    cuda = nlm_colored_torch(torch.from_numpy(batch).cuda()).cpu().numpy()
    assert np.array_equal(cuda, nlm_colored_torch(torch.from_numpy(batch)).numpy())
    assert np.array_equal(cuda[0], opencv_nlm(batch[0]))
    tiled = nlm_colored_torch(torch.from_numpy(batch).cuda(), tile=48).cpu().numpy()
    assert np.array_equal(tiled, cuda)


# -- the context, the model cache, training ---------------------------------------------------------------------


def test_a_device_side_assert_is_a_lost_device(tmp_path):
    """Provoked in a child process (it poisons the CUDA context for good): the classifier and the
    upscaler see the real error."""
    script = tmp_path / "assert.py"
    script.write_text(
        "import numpy as np, torch\n"
        "from workers.errors import DeviceLostError\n"
        "from workers.ops.device_errors import is_broken_cuda_context\n"
        "from workers.ops.upscale import load_upscaler\n"
        f"upscaler = load_upscaler({str(SHIPPED)!r}, 'cuda')\n"
        "try:\n"
        "    torch.zeros(2, device='cuda')[torch.tensor([5], device='cuda')].item()\n"
        "except Exception as exc:\n"
        "    assert is_broken_cuda_context(exc), repr(exc)\n"
        "try:\n"
        "    upscaler.upscale(np.zeros((1, 8, 8, 3), np.uint8))\n"
        "except DeviceLostError as exc:\n"
        "    print('lost:', exc)\n")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])})
    assert result.returncode == 0 and "lost:" in result.stdout, result.stderr[-3000:]


def test_the_model_cache_places_the_weights_on_the_card(tmp_path):
    from workers.io.storage import LocalStorage
    from workers.run.context import StageContext
    from workers.run.presets import PresetInputs, build_pipeline
    from workers.run.resolve import publish_checkpoint
    from workers.settings import Settings
    from workers.training.artifacts import TrainingOutput

    ctx = StageContext(Settings(storage_url=str(tmp_path / "store"), device="cuda", model_cache_dir=str(tmp_path / "c")))
    checkpoint = publish_checkpoint(TrainingOutput(LocalStorage(SHIPPED.parent), SHIPPED.name), ctx.storage)
    upscaler = ctx.upscaler_for(build_pipeline("learned", PresetInputs(checkpoint=checkpoint)))
    parameters = list(upscaler.descriptor.model.parameters())
    assert {p.device.type for p in parameters} == {"cuda"}
    assert {p.dtype for p in parameters} == {upscaler.dtype} and upscaler.dtype != torch.float32
    assert upscaler.upscale(images(1, 32, 24)).shape == (1, 96, 128, 3)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_a_few_training_steps_on_the_card(tmp_path, precision):
    """fp16 with the gradient scaler, bf16 without; the skip decision stays on the device."""
    from tests.helpers.training import TINY, write_dataset
    from workers.io.storage import StorageFactory
    from workers.settings import Settings
    from workers.training.setup import make_trainer

    settings = Settings(device="cuda", precision=precision, weights_dir="/nonexistent", photo_corpus="")
    trainer = make_trainer(str(write_dataset(tmp_path / "data")), None, str(make_random_compact(tmp_path / "c.pth")),
                           TINY, settings, StorageFactory(settings))
    assert trainer.scaler.is_enabled() is (precision == "fp16") and not trainer.host_checks
    result = trainer.run()
    assert result.finished and result.steps == TINY.steps
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


# -- a whole run -------------------------------------------------------------------------------------------------


def test_an_embedded_run_on_the_card_matches_the_cpu_run(tmp_path):
    """``producer enqueue dataset/`` (the learned preset) with DEVICE=cuda against DEVICE=cpu; and the
    GPU placement of NL-means on the card against the CPU placement on the card, byte for byte."""
    base = {k: v for k, v in os.environ.items() if k not in {"BROKER_URL", "STORAGE_URL", "WEIGHTS", "DEVICE"}}
    base["PYTHONPATH"] = os.pathsep.join([str(REPO), base.get("PYTHONPATH", "")])

    def submission(device: str, store: str, *flags: str) -> list[list[str]]:
        env = {**base, "DEVICE": device, "STORAGE_URL": str(tmp_path / store)}
        result = run_producer("enqueue", str(DATASET), *flags, env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        (run,) = (tmp_path / store / "runs").iterdir()
        return [line.split(",") for line in (run / "submission.csv").read_text().splitlines()]

    cpu, cuda = submission("cpu", "cpu"), submission("cuda", "cuda")
    assert [row[0] for row in cuda] == [row[0] for row in cpu]
    ours = np.array([row[1:] for row in cuda[1:]], int)
    reference = np.array([row[1:] for row in cpu[1:]], int)
    assert psnr(ours, reference) >= SUBMISSION_MIN_PSNR_DB, psnr(ours, reference)

    nlm = ("--preset", "standard", "--weights", str(SHIPPED))
    assert submission("cuda", "nlm-cpu", *nlm, "--denoise-on", "cpu") == submission(
        "cuda", "nlm-gpu", *nlm, "--denoise-on", "gpu")
