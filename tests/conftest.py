"""Shared fixtures: real weights, tiny images, settings pointing at a temporary store."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

from tests.helpers.models import make_random_compact, make_random_rrdb
from tests.helpers.paths import weights_file
from workers.settings import Settings

pytest_plugins = ["tests.helpers.servers", "tests.helpers.cluster"]

# Training must not pick up this machine's photo corpus (~/.cache/lowlight-sr/photo-corpus) unless a test
# names one: subprocesses (producer, workers) inherit this; in-process tests pass photo_corpus="".
os.environ["PHOTO_CORPUS"] = ""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Fault scenarios run one after another in one pytest-xdist process (``--dist loadgroup``): their
    clocks (stall, sweep, outage) tolerate one busy core, not a second scenario on the same servers'
    machine. ``gpu`` tests need a CUDA device: without one they are skipped, and the reason says so."""
    for item in items:
        if item.get_closest_marker("faults"):
            item.add_marker(pytest.mark.xdist_group("faults"))
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="gpu: needs a CUDA device, none here (scripts/device-check runs these on a card)")
    for item in gpu:
        item.add_marker(skip)


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


@pytest.fixture
def settings(tmp_path: Path, weights_path: Path) -> Settings:
    """Embedded-mode settings: local store in tmp, real weights, CPU."""
    return Settings(storage_url=str(tmp_path / "store"), weights=str(weights_path), device="cpu", cpu_workers=2)


@pytest.fixture(scope="session")
def compact_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The compact SRVGG model (realesr-animevideov3), or a small random one in its format when the
    shared weights are absent (a warning says so)."""
    real = weights_file("realesr-animevideov3.pth")
    if real.is_file():
        return real
    warnings.warn(f"{real} not found: tests use a random-init compact stand-in", stacklevel=1)
    return make_random_compact(tmp_path_factory.mktemp("weights") / "random_compact.pth")
