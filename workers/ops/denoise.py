"""Denoisers: stateless functions from an RGB uint8 array to an RGB uint8 array of the same shape.

Selected by name through :data:`DENOISERS`, so a new method is one function and one registry line.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from workers.errors import ConfigError, DeviceOutOfMemoryError
from workers.ops.device_errors import attempt, device_failures_raised
from workers.registry import lookup


@dataclass(frozen=True)
class DenoiseSpec:
    """Which denoiser and its strength. Defaults are the seed's ``(7, 7, 7, 21)``."""

    method: str = "nlm"
    h: float = 7.0
    h_color: float = 7.0
    template: int = 7
    search: int = 21

    def __post_init__(self) -> None:
        lookup("denoiser", self.method, DENOISERS)
        if self.template % 2 == 0 or self.search % 2 == 0 or self.template < 1 or self.search < self.template:
            raise ConfigError(
                f"NL-means windows must be odd with search >= template, got template={self.template}, search={self.search}"
            )
        if self.h < 0 or self.h_color < 0:
            raise ConfigError("NL-means strengths h and h_color must be >= 0")


def nlm_opencv(rgb: np.ndarray, spec: DenoiseSpec) -> np.ndarray:
    """OpenCV's colored NL-means, fed BGR exactly as the seed did."""
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    out = cv2.fastNlMeansDenoisingColored(bgr, None, spec.h, spec.h_color, spec.template, spec.search)
    return cv2.cvtColor(out, cv2.COLOR_BGR2RGB)


def identity(rgb: np.ndarray, spec: DenoiseSpec) -> np.ndarray:
    return rgb


DENOISERS: dict[str, Callable[[np.ndarray, DenoiseSpec], np.ndarray]] = {
    "nlm": nlm_opencv,
    "none": identity,
}


def denoise(rgb: np.ndarray, spec: DenoiseSpec) -> np.ndarray:
    """Apply the denoiser ``spec`` names to ``rgb`` (H x W x 3 uint8)."""
    return DENOISERS[spec.method](rgb, spec)


MIN_NLM_TILE = 16  # below this a tile is mostly the border (13 px a side) it reads around it: give up instead


def denoise_on_device(images: np.ndarray, spec: DenoiseSpec, device: Any, max_pixels: int = 1_048_576) -> np.ndarray:
    """NL-means for a batch (``N x H x W x 3`` uint8 RGB) on a torch device: the PyTorch port of
    OpenCV's colored NL-means, bit-identical to :func:`nlm_opencv` (see :mod:`workers.ops.nlm_torch`).

    Images above ``max_pixels`` are denoised in square tiles of about that many pixels (a 16 MP image
    whole would need ~12 GB). On running out of memory it retries, after the ``except`` block has
    freed the failed attempt: one row of the search window at a time, then ever smaller tiles.
    Tiling and chunking never change the result.

    Raises:
        DeviceOutOfMemoryError: even the smallest tile does not fit.
        DeviceLostError: the device's CUDA context is broken.
    """
    import torch

    from workers.ops.nlm_torch import DEFAULT_CHUNK, nlm_colored_torch

    if spec.method == "none":
        return images
    _, height, width, _ = images.shape
    tile = None if height * width <= max_pixels else max(MIN_NLM_TILE, math.isqrt(max_pixels))
    chunk = DEFAULT_CHUNK
    with device_failures_raised(device):
        x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
        while True:
            def run(c: int = chunk, t: int | None = tile) -> Any:
                return nlm_colored_torch(x, spec.h, spec.h_color, spec.template, spec.search, c, t)

            fitted, out = attempt(run)
            if fitted and out is not None:
                return out.cpu().numpy()
            if x.device.type == "cuda":
                torch.cuda.empty_cache()
            if chunk > spec.search:  # first: one row of the search window at a time, the least it can hold
                chunk = spec.search
            elif (tile or max(height, width)) // 2 >= MIN_NLM_TILE:
                tile = (tile or max(height, width)) // 2
            else:
                raise DeviceOutOfMemoryError(f"NL-means of {len(images)} images does not fit on {device} "
                                             f"even in {tile or max(height, width)}px tiles")
