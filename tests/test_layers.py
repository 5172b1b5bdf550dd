"""The layers hold: the import contracts pass, and the packages below the runtime load no Celery.

`lint-imports` (run by `make test` before pytest, and here) checks the contracts in pyproject.toml;
the sys.modules check catches what a static graph cannot: an import done by a library on our behalf.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BELOW_RUNTIME = ("workers.io", "workers.ops", "workers.training", "workers.run", "workers.report")
CELERY_SIDE = ("celery", "celery_batches", "kombu", "redis", "flower")


def test_import_contracts_hold() -> None:
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if lint is None:
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    result = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_packages_below_the_runtime_import_no_celery() -> None:
    """Every module of the image operations, I/O, training, run stages and report, imported in a fresh
    interpreter, leaves no Celery, kombu or Redis module behind."""
    script = textwrap.dedent(f"""
        import importlib, pkgutil, sys
        for package in {BELOW_RUNTIME!r}:
            module = importlib.import_module(package)
            for info in pkgutil.walk_packages(module.__path__, package + "."):
                importlib.import_module(info.name)
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in {CELERY_SIDE!r})
        assert not loaded, loaded
        print(len([m for m in sys.modules if m.startswith("workers.")]))
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout.strip()) > 25  # the walk really imported the packages' modules
