"""scripts/device-check: its CPU dry run exercises every step's plumbing (no card needed, no timing
asserted), and a carried wheel is installed privately, offline."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

from tests.helpers.models import make_random_rrdb
from tests.helpers.paths import REPO

SCRIPT = REPO / "scripts" / "device-check"
STEPS = ("gpu tests", "throughput", "batching", "denoise placement", "cpu per gpu", "training", "png encode")


def load_device_check() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("device_check", str(SCRIPT))
    spec = importlib.util.spec_from_loader("device_check", loader)
    assert spec
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_dry_run_runs_every_step_and_writes_one_table_to_out(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"),
           "WEIGHTS": str(make_random_rrdb(tmp_path / "tiny_x4.pth", blocks=1))}
    result = subprocess.run([sys.executable, str(SCRIPT), "--dry-run"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = (tmp_path / "out" / "device-check.md").read_text()
    summary = report.split("\n### ", 1)[0]
    assert summary.startswith("## Device check: ") and "DRY RUN on the CPU" in summary
    assert summary.count("| step | metric | value | unit | note |") == 1  # one table
    for step in STEPS:
        assert f"| {step} | " in summary, step
    assert "| gpu tests | gpu tests | " in summary and "skipped" in summary  # no card: skipped, and counted
    for metric in ("(b) vs (a)", "(d) vs (l)", "GPU stage I/O share, before", "training steps/s",
                   "cores of NL-means one upscaler keeps busy", "PNG encode, ours"):
        assert metric in summary, metric
    assert "timed out" not in summary and "failed" not in summary
    assert "### throughput: ok" in report  # each step's full output follows the table


def test_a_carried_wheel_is_installed_privately_without_the_network(tmp_path, monkeypatch):
    check = load_device_check()
    wheels = tmp_path / "bundle" / "wheels"
    wheels.mkdir(parents=True)
    with zipfile.ZipFile(wheels / "probe_pkg-1.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr("probe_pkg.py", "VALUE = 42\n")
        wheel.writestr("probe_pkg-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: probe-pkg\nVersion: 1.0\n")
        wheel.writestr("probe_pkg-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                                         "Tag: py3-none-any\n")
        wheel.writestr("probe_pkg-1.0.dist-info/RECORD", "")
    monkeypatch.setattr(check, "BUNDLE", tmp_path / "bundle")
    monkeypatch.setattr(check, "_importable", lambda python, module: False)
    args = check.parse_args(["--dry-run"])
    env = check.environment(args, tmp_path / "scratch")
    assert env["HF_HUB_OFFLINE"] == "1" and str(REPO) in env["PYTHONPATH"]
    probe = subprocess.run([sys.executable, "-c", "import probe_pkg; print(probe_pkg.VALUE)"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == "42", probe.stderr
    assert not list(Path(sys.prefix).glob("lib/python*/site-packages/probe_pkg.py"))  # nothing in the environment


@pytest.mark.parametrize("argv", [["--help"]])
def test_help(argv):
    result = subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "device-check" in result.stdout
