"""What the benchmarks measure on: synthetic inputs, the model's counted cost, and the production stages
(NL-means, the upscaler) timed over those inputs.

The stages are the production functions (``workers.ops.denoise.denoise``, ``Upscaler.upscale``), called
directly, so a number here is what a worker pays for the same work. torch, OpenCV and the pipeline are
imported inside functions so a benchmark's ``--help`` stays instant.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# -- inputs -------------------------------------------------------------------------------------------


def synthetic_images(count: int, width: int, height: int, seed: int = 0) -> list[np.ndarray]:
    """Dark, noisy RGB uint8 images with smooth shading and hard edges, deterministic per ``seed``.

    Degraded like ``dataset/make_sample.py``: darkened (0.6 * x**1.3), then Poisson-Gaussian noise.
    NL-means and the upscaler cost the same whatever the content; the content only keeps the
    pictures plausible for anyone who looks at the outputs.
    """
    images = []
    for k in range(count):
        rng = np.random.default_rng((seed, k))
        coarse = rng.uniform(0.2, 1.0, (4, 5, 3)).astype(np.float32)
        y = np.linspace(0, 3, height)[:, None]
        x = np.linspace(0, 4, width)[None, :]
        y0, x0 = np.floor(y).astype(int).clip(0, 2), np.floor(x).astype(int).clip(0, 3)
        fy, fx = (y - y0)[..., None], (x - x0)[..., None]
        shade = (
            coarse[y0, x0] * (1 - fy) * (1 - fx)
            + coarse[y0 + 1, x0] * fy * (1 - fx)
            + coarse[y0, x0 + 1] * (1 - fy) * fx
            + coarse[y0 + 1, x0 + 1] * fy * fx
        )
        for _ in range(3):  # a few flat rectangles: edges for the upscaler to sharpen
            top, left = rng.integers(0, max(height - 2, 1)), rng.integers(0, max(width - 2, 1))
            shade[top : top + max(height // 3, 1), left : left + max(width // 3, 1)] = rng.uniform(0, 1, 3)
        dark = 0.6 * shade**1.3
        noisy = rng.poisson(dark * 60) / 60 + rng.normal(0, 0.02, dark.shape)
        images.append((noisy.clip(0, 1) * 255).round().astype(np.uint8))
    return images


def write_inputs(folder: Path, images: Sequence[np.ndarray], prefix: str = "test_") -> list[Path]:
    """Save ``images`` as ``<prefix>00001.png``... (the competition's naming)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, rgb in enumerate(images, start=1):
        path = folder / f"{prefix}{i:05d}.png"
        Image.fromarray(rgb).save(path)
        paths.append(path)
    return paths


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- the model ----------------------------------------------------------------------------------------


def conv_macs_per_pixel(module: Any, device: Any, dtype: Any, size: int = 8) -> float:
    """Multiply-adds per input pixel of ``module``'s convolutions, counted on a ``size`` x ``size`` input.

    Counts Conv2d layers only (everything else in these SR networks is noise next to them); exact
    for fully convolutional models whose convolutions keep their input's size (RRDBNet, SRVGG).
    """
    import torch

    total = 0

    def hook(conv: torch.nn.Conv2d, _inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        kh, kw = conv.kernel_size
        total += output[0].numel() * (conv.in_channels // conv.groups) * kh * kw

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.inference_mode():
            module(torch.zeros(1, 3, size, size, device=device, dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
    return total / (size * size)


def describe_model(path: Path, descriptor: Any, dtype: Any) -> str:
    """``name (architecture, N M params, dtype)``: the model row of a machine table."""
    params = sum(p.numel() for p in descriptor.model.parameters())
    return f"{path.name} ({descriptor.architecture.name}, {params / 1e6:.2f} M params, {dtype_name(dtype)})"


def dtype_name(dtype: Any) -> str:
    """``torch.float32`` -> ``float32``."""
    return str(dtype).replace("torch.", "")


# -- the stages ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageTiming:
    """One stage over some images: total seconds and total input pixels."""

    label: str
    images: int
    seconds: float
    pixels: int  # input pixels, summed

    @property
    def ms_per_image(self) -> float:
        return 1000 * self.seconds / self.images

    @property
    def ms_per_megapixel(self) -> float:
        return 1000 * self.seconds / (self.pixels / 1e6)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds


def _pixels(images: Sequence[np.ndarray]) -> int:
    return sum(i.shape[0] * i.shape[1] for i in images)


def measure_nlm(images: Sequence[np.ndarray], threads: int = 1) -> StageTiming:
    """The production CPU stage (``workers.ops.denoise.denoise``, seed settings) with ``threads`` OpenCV threads."""
    import cv2

    from workers.ops.denoise import DenoiseSpec, denoise

    spec = DenoiseSpec()
    default_threads = cv2.getNumThreads()
    cv2.setNumThreads(threads)
    try:
        denoise(images[0][:8, :8], spec)  # the first call pays OpenCV's lazy initialisation
        start = time.perf_counter()
        for rgb in images:
            denoise(rgb, spec)
        seconds = time.perf_counter() - start
    finally:
        cv2.setNumThreads(default_threads)
    label = f"NL-means (OpenCV, {threads} thread{'s' if threads > 1 else ''})"
    return StageTiming(label, len(images), seconds, _pixels(images))


def warm_up_upscaler(upscaler: Any, images: Sequence[np.ndarray], batch_size: int, full: bool = False) -> None:
    """Untimed passes: on CUDA (or ``full``) a full batch and the last, partial one (kernels, allocator,
    and for torch.compile each input shape it meets); on a CPU a tiny crop (a full pass is slow there)."""
    if upscaler.device.type == "cuda" or full:
        sizes = {min(batch_size, len(images)), len(images) % batch_size} - {0}
        for size in sorted(sizes):
            upscaler.upscale(np.stack(list(images[:size])))
    else:
        upscaler.upscale(np.stack(list(images[:1]))[:, :8, :8])


def measure_upscale(upscaler: Any, images: Sequence[np.ndarray], batch_size: int) -> StageTiming:
    """The production GPU stage (``Upscaler.upscale``, transfers and uint8 conversion included)."""
    warm_up_upscaler(upscaler, images, batch_size)
    start = time.perf_counter()
    for batch in chunks(images, batch_size):
        upscaler.upscale(np.stack(list(batch)))  # returns host arrays: synchronised
    seconds = time.perf_counter() - start
    label = f"upscale, batch {batch_size} ({dtype_name(upscaler.dtype)}, {upscaler.device.type})"
    return StageTiming(label, len(images), seconds, _pixels(images))


def tflops(macs_per_pixel: float, timing: StageTiming) -> float:
    """Achieved TFLOP/s: 2 FLOP per multiply-add."""
    return 2 * macs_per_pixel * timing.pixels / timing.seconds / 1e12
