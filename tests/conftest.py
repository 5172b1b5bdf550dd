"""Shared fixtures: real weights, tiny images, settings pointing at a temporary store."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from workers.settings import Settings

pytest_plugins = ["tests.fixtures_servers", "tests.fixtures_cluster"]

REPO = Path(__file__).resolve().parent.parent
# Training must not pick up this machine's photo corpus (~/.cache/lowlight-sr/photo-corpus) unless a test
# names one: subprocesses (producer, workers) inherit this; in-process tests pass photo_corpus="".
os.environ["PHOTO_CORPUS"] = ""
WEIGHTS_DIR = Path(os.environ.get("TEST_WEIGHTS_DIR", REPO.parent / "shared" / "weights"))
DATASET = REPO / "dataset"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``gpu`` tests need a CUDA device: without one they are skipped, and the reason says so."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="gpu: needs a CUDA device, none here (scripts/device-check runs these on a card)")
    for item in gpu:
        item.add_marker(skip)


def weights_file(name: str = "RealESRGAN_x4plus.pth") -> Path:
    return WEIGHTS_DIR / name


@pytest.fixture(scope="session")
def weights_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real RealESRGAN_x4plus weights (the default model's offline stand-in).

    If the shared weights are absent, a randomly initialised 2-block RRDBNet in the same format is
    used instead, so the code paths still run; a warning says so.
    """
    real = weights_file()
    if real.is_file():
        return real
    warnings.warn(f"{real} not found: tests use a random-init RRDBNet stand-in", stacklevel=1)
    return make_random_rrdb(tmp_path_factory.mktemp("weights") / "random_rrdb.pth")


def make_random_rrdb(path: Path, blocks: int = 2) -> Path:
    import torch
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    model = ESRGAN(in_nc=3, out_nc=3, num_filters=64, num_blocks=blocks, scale=4)
    torch.save({"params_ema": model.state_dict()}, path)
    return path


@pytest.fixture
def settings(tmp_path: Path, weights_path: Path) -> Settings:
    """Embedded-mode settings: local store in tmp, real weights, CPU."""
    return Settings(storage_url=str(tmp_path / "store"), weights=str(weights_path), device="cpu", cpu_workers=2)


def noisy_image(width: int = 32, height: int = 24, seed: int = 0) -> np.ndarray:
    """A small, dark, noisy RGB image with some structure (gradients + a square)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x / max(width - 1, 1), y / max(height - 1, 1), 0.5 + 0 * x], axis=-1) * 120
    base[height // 4 : height // 2, width // 4 : width // 2] += 60
    noisy = base + rng.normal(0, 12, base.shape)
    return noisy.clip(0, 255).astype(np.uint8)


def png_bytes(rgb: np.ndarray, mode: str | None = None, fmt: str = "PNG") -> bytes:
    image = Image.fromarray(rgb)
    if mode:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def compact_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The compact SRVGG model (realesr-animevideov3), or a small random one in its format when the
    shared weights are absent (a warning says so)."""
    real = weights_file("realesr-animevideov3.pth")
    if real.is_file():
        return real
    warnings.warn(f"{real} not found: tests use a random-init compact stand-in", stacklevel=1)
    return make_random_compact(tmp_path_factory.mktemp("weights") / "random_compact.pth")


def make_random_compact(path: Path, num_conv: int = 4) -> Path:
    import torch
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(0)
    model = Compact(num_in_ch=3, num_out_ch=3, num_feat=16, num_conv=num_conv, upscale=4)
    torch.save({"params": model.state_dict()}, path)
    return path
