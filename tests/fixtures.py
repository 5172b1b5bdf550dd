"""Helpers that build inputs and runs for tests (no fixtures: plain functions)."""

from __future__ import annotations

import importlib.util
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from types import ModuleType

from tests.conftest import REPO, noisy_image, png_bytes
from workers.io.storage import Storage, storage_url_for
from workers.run.manifest import PipelineSpec, RunManifest, save_manifest


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_bomb(width: int, height: int) -> bytes:
    """A small, valid-looking PNG whose IHDR declares width x height: a decompression bomb's shape."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b"")


GOOD = ("test_00001.png", "test_00002.png", "test_00003_grey.png", "test_00004_rgba.png")
BAD = {
    "test_00005_tiny.png": "submission has",  # 1x1: processed, but its row is too short for the submission
    "test_00006_empty.png": "empty file",
    "test_00007_text.png": "not a recognised image",
    "test_00008_truncated.png": "truncated or corrupt",
    "test_00009_bomb.png": "MAX_IMAGE_PIXELS",
    "zz_notes.txt": "not a recognised image",
}


def write_hostile_folder(folder: Path) -> Path:
    """Four good 32x24 images (RGB, RGB, grey, RGBA) and one of each kind of bad input."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        GOOD[0]: png_bytes(noisy_image(32, 24, seed=1)),
        GOOD[1]: png_bytes(noisy_image(32, 24, seed=2)),
        GOOD[2]: png_bytes(noisy_image(32, 24, seed=3), mode="L"),
        GOOD[3]: png_bytes(noisy_image(32, 24, seed=4), mode="RGBA"),
        "test_00005_tiny.png": png_bytes(noisy_image(1, 1)),
        "test_00006_empty.png": b"",
        "test_00007_text.png": b"this is not an image\n",
        "test_00008_truncated.png": png_bytes(noisy_image(32, 24, seed=5))[:200],
        "test_00009_bomb.png": png_bomb(30000, 30000),
        "zz_notes.txt": b"some notes that live next to the images\n",
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def write_images(folder: Path, count: int, width: int = 32, height: int = 24, prefix: str = "test_") -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"{prefix}{i:05d}.png" for i in range(1, count + 1)]
    for i, name in enumerate(names):
        (folder / name).write_bytes(png_bytes(noisy_image(width, height, seed=i)))
    return names


def make_run(storage: Storage, folder: Path, names: list[str], run_id: str = "r1",
             pipeline: PipelineSpec | None = None, expected_columns: int | None = None) -> RunManifest:
    manifest = RunManifest(run_id, storage_url_for(folder), tuple(names), pipeline or PipelineSpec(), "file:test",
                           expected_columns)
    save_manifest(storage, manifest)
    return manifest


def run_producer(*args: str, env: dict[str, str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``producer ARGS`` as a user runs it: a separate process."""
    return subprocess.run([sys.executable, "-m", "producer", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


BENCHMARKS = REPO / "benchmarks"


def load_script(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script runs
    spec.loader.exec_module(module)
    return module
