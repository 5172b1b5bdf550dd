"""Smoke tests of benchmarks/: every benchmark runs on tiny inputs and prints its tables.

They check that the benchmarks work, never how fast anything is: speed claims live in the
benchmarks' output only. A one-block random RRDBNet keeps them quick on a 2-core machine.
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch
from PIL import Image

from testbed.servers import find_redis_server, find_weed
from tests.helpers.images import noisy_image
from tests.helpers.models import make_random_rrdb
from tests.helpers.paths import REPO

SCRIPTS = ("throughput", "batching", "cpu_per_gpu", "quality", "denoise_placement", "aggregate", "memory", "liveness",
           "cpu_inference", "training_speed", "png_encode")
# Benchmarks that need the photo corpus or minutes of training: their --help at least.
HELP_ONLY = ("capacity_ladder", "heldout", "fixed_cost", "finetune_sweep")


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_random_rrdb(tmp_path_factory.mktemp("bench-weights") / "tiny_x4.pth", blocks=1)


@pytest.fixture(autouse=True)
def keep_torch_threads() -> Iterator[None]:
    """The scripts' --torch-threads changes this process; give later tests their threads back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def benchmark(name: str) -> ModuleType:
    """``benchmarks.<name>``, the module ``python -m benchmarks.<name>`` runs."""
    return importlib.import_module(f"benchmarks.{name}")


def run_main(name: str, *args: str) -> int:
    return benchmark(name).main([*args, "--device", "cpu", "--torch-threads", "1"])


@pytest.mark.parametrize("name", SCRIPTS + HELP_ONLY)
def test_script_help(name):
    result = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", "--help"], capture_output=True,
                            text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: python -m benchmarks.{name}")


def assert_machine_table(out: str) -> None:
    for row in ("| CPU ", "| cores ", "| torch ", "| device ", "| model ", "| image size "):
        assert row in out, out


def test_throughput_quick(tiny_weights, capsys):
    assert run_main("throughput", "--quick", "--weights", str(tiny_weights), "--seed-reload") == 0
    out = capsys.readouterr().out
    assert "| mode " in out and "| images/s " in out
    assert "| (a) seed serial loop" in out and "| (a') seed loop, checkpoint reloaded" in out
    assert "| (b) embedded" in out and "(c) distributed" not in out
    assert "| upscale (BGR float64 -> forward -> uint8)" in out  # the seed loop's breakdown
    assert "| NL-means (OpenCV, 1 thread)" in out and "| upscale, batch 1 (float32, cpu)" in out
    assert "cores" in out and "FLOP/cycle" in out
    assert_machine_table(out)


@pytest.mark.integration
def test_throughput_distributed_quick(tiny_weights, capsys):
    if not find_redis_server() or not find_weed():
        pytest.skip("needs redis-server and weed, as the integration tests")
    assert run_main("throughput", "--quick", "--distributed", "--skip-seed", "--skip-embedded",
                    "--weights", str(tiny_weights)) == 0
    out = capsys.readouterr().out
    assert "| (c) distributed" in out and "| (b) embedded" not in out
    assert "(c) start-up: redis-server" in out and "(c) start-up: workers" in out


@pytest.mark.integration
def test_aggregate_quick(capsys):
    if not find_weed():
        pytest.skip("needs weed, as the integration tests")
    assert benchmark("aggregate").main(["--count", "12", "--fail-every", "5", "--threads", "1,4", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "12 images (2 failed)" in out and "ms simulated round trip" in out
    assert "| 1  " in out and "| 4  " in out


@pytest.mark.integration
def test_liveness_backlog_quick(capsys):
    if not (find_weed() and find_redis_server()):
        pytest.skip("needs redis-server and weed, as the integration tests")
    assert benchmark("liveness").main(["--part", "backlog", "--runs", "1", "--backlog-images", "2", "--periods", "1",
                                         "--stall", "1"]) == 0
    out = capsys.readouterr().out
    assert "| 1 x STALL_AFTER_S | 2                 | 2  " in out


def test_throughput_learned_against_its_serial_loop_and_the_gpu_stage(tiny_weights, capsys, tmp_path):
    results = tmp_path / "results.jsonl"
    assert run_main("throughput", "--quick", "--weights", str(tiny_weights), "--learned", "--gpu-stage",
                    "--skip-embedded", "--results", str(results)) == 0
    out = capsys.readouterr().out
    assert "| (l) serial loop as (a), the learned preset's work" in out and "x vs (l)" in out
    assert "| before: inputs fetched and decoded one at a time" in out and "| I/O share of wall " in out
    assert "### Where the serial loop's time goes (l)" in out
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert {"(d) vs (l)", "GPU stage I/O share, before"} <= {line["metric"] for line in lines}
    assert {line["script"] for line in lines} == {"throughput"}


def test_cpu_inference_quick(capsys):
    assert run_main("cpu_inference", "--quick", "--no-compile", "--no-runtimes", "--rounds", "1") == 0
    out = capsys.readouterr().out
    assert "| fp32, NCHW (before) " in out and "| bf16, channels_last (PRECISION=bf16" in out and "batch 4 " in out
    assert "| production Upscaler.upscale, auto: " in out and "| verdict " in out
    assert_machine_table(out)


@pytest.mark.slow
def test_training_speed_quick(capsys):
    assert run_main("training_speed", "--quick") == 0
    out = capsys.readouterr().out
    assert "| PRECISION " in out and "| steps/s " in out and "| auto " in out


def test_png_encode_quick(capsys):
    assert run_main("png_encode", "--quick") == 0
    out = capsys.readouterr().out
    assert "| ours: workers.io.imageio.encode_png" in out and "| bytes " in out  # ours against itself
    assert out.count("| pixels ") == 3  # OpenCV, Pillow, the Up filter: same pixels, other bytes


@pytest.mark.slow
def test_memory_quick(capsys):
    assert run_main("memory", "--quick") == 0
    out = capsys.readouterr().out
    assert "| input MP " in out and "| peak - before MiB " in out and "| vs output " in out
    assert "| 0.250 " in out and "| 577x433 " in out  # --quick: 0.25 and 0.5 MP
    assert "| images " in out and "| KiB per image " in out and "| 2,000 " in out
    assert_machine_table(out)


def test_batching_quick(tiny_weights, capsys):
    assert run_main("batching", "--quick", "--batch-sizes", "1,2", "--formats", "nchw,channels_last",
                    "--weights", str(tiny_weights)) == 0
    out = capsys.readouterr().out
    assert "| vs batch 1 " in out
    assert out.count("| channels_last (production) ") == 2 and out.count("| nchw ") == 2
    assert "- channels_last (production): best batch" in out and "- nchw: best batch" in out
    assert "runs the same convolutions over more pixels" in out  # the CPU caveat
    assert_machine_table(out)


def test_batching_skips_batches_larger_than_the_image_count(tiny_weights, capsys):
    assert run_main("batching", "--quick", "--batch-sizes", "1,4", "--weights", str(tiny_weights)) == 0
    assert "skipped (only 2 images)" in capsys.readouterr().out


def test_cpu_per_gpu_quick(tiny_weights, capsys):
    assert run_main("cpu_per_gpu", "--quick", "--weights", str(tiny_weights)) == 0
    out = capsys.readouterr().out
    assert re.search(r"\| cores_needed = upscale images/s x NL-means s/image +\| \*\*[0-9.]+\*\*", out), out
    assert_machine_table(out)


def test_denoise_placement_quick(tiny_weights, capsys):
    assert benchmark("denoise_placement").main(["--quick", "--device", "cpu", "--weights", str(tiny_weights),
                                   "--torch-threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "NL-means, PyTorch port" in out and "| cpu        |" in out and "| gpu        |" in out
    assert "| synthetic (this run's 2 inputs) | 2 " in out and "| dataset/test + dataset/val/val " in out
    assert "| inf (identical) " in out and "| NO " not in out


def test_quality_on_a_tiny_dataset(tmp_path, tiny_weights, capsys):
    for folder in ("val/val", "val/gt"):
        (tmp_path / "data" / folder).mkdir(parents=True)
    Image.fromarray(noisy_image(16, 12, seed=1)).save(tmp_path / "data/val/val/val_00001.png")
    Image.fromarray(noisy_image(64, 48, seed=2)).save(tmp_path / "data/val/gt/gt_00001.png")
    models = tmp_path / "models"
    models.mkdir()
    make_random_rrdb(models / "other_x4.pth", blocks=1)
    (models / "broken.pth").write_bytes(b"not a checkpoint")
    (models / "README.md").write_text("not a model")

    assert run_main("quality", "--dataset", str(tmp_path / "data"), "--weights", str(tiny_weights),
                    "--weights-dir", str(models)) == 0
    out = capsys.readouterr().out
    assert "| method " in out and "| PSNR (dB) " in out
    for label in ("bicubic x4", "NL-means + bicubic x4", "seed pipeline: NL-means + tiny_x4.pth",
                  "default pipeline: NL-means + tiny_x4.pth, RGB", "no denoise + tiny_x4.pth",
                  "NL-means + other_x4.pth, RGB"):
        assert f"| {label}" in out, label
    assert "left out broken.pth" in out and "README.md" not in out
    assert "(1 missing)" not in out  # every variant produced a 4x image of the truth's size
    assert_machine_table(out)


def test_fixed_cost_against_options_name_existing_paths_absolutely(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each whole-process run starts in its own run store: a relative --weights must still find its file."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "w.safetensors").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    absolute_if_path = benchmark("fixed_cost").absolute_if_path
    assert absolute_if_path("models/w.safetensors") == str(tmp_path / "models" / "w.safetensors")
    assert [absolute_if_path(a) for a in ("--precision", "fp32", "missing.pt")] == ["--precision", "fp32", "missing.pt"]
