"""Where the tests find the repository, the sample, the weights and the benchmarks."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]


WEIGHTS_DIR = Path(os.environ.get("TEST_WEIGHTS_DIR", REPO.parent / "shared" / "weights"))


DATASET = REPO / "dataset"


def weights_file(name: str = "RealESRGAN_x4plus.pth") -> Path:
    return WEIGHTS_DIR / name


BENCHMARKS = REPO / "benchmarks"


def load_script(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script runs
    spec.loader.exec_module(module)
    return module
