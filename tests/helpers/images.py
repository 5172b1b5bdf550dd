"""Tiny test images: noisy RGB arrays, encoded files, hostile folders, decompression bombs, and an OpenCV NL-means reference."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
from PIL import Image


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


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_bomb(width: int, height: int) -> bytes:
    """A small, valid-looking PNG whose IHDR declares width x height: a decompression bomb's shape."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b"")
    )


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


def opencv_nlm(rgb: np.ndarray, h: float = 7, h_color: float = 7, template: int = 7, search: int = 21) -> np.ndarray:
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    return cv2.cvtColor(cv2.fastNlMeansDenoisingColored(bgr, None, h, h_color, template, search), cv2.COLOR_BGR2RGB)


def synthetic(width: int, height: int, sigma: float, seed: int) -> np.ndarray:
    """Smooth colored gradients, a bright square and an edge, plus Gaussian noise of ``sigma``."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    clean = np.stack([40 + 3 * x, 30 + 4 * y, 90 + 0 * x], axis=-1).astype(float)
    clean[height // 3 : 2 * height // 3, width // 3 : 2 * width // 3] += 70
    clean[:, : width // 5, 2] -= 60
    return (clean + rng.normal(0, sigma, clean.shape)).clip(0, 255).astype(np.uint8)
