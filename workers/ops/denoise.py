"""Denoisers: stateless functions from an RGB uint8 array to an RGB uint8 array of the same shape.

Selected by name through :data:`DENOISERS`, so a new method is one function and one registry line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from workers.errors import ConfigError, DeviceOutOfMemoryError


@dataclass(frozen=True)
class DenoiseSpec:
    """Which denoiser and its strength. Defaults are the seed's ``(7, 7, 7, 21)``."""

    method: str = "nlm"
    h: float = 7.0
    h_color: float = 7.0
    template: int = 7
    search: int = 21

    def __post_init__(self) -> None:
        if self.method not in DENOISERS:
            raise ConfigError(f"unknown denoiser {self.method!r}; choose one of {sorted(DENOISERS)}")
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


def denoise_on_device(images: np.ndarray, spec: DenoiseSpec, device: object) -> np.ndarray:
    """NL-means for a batch (``N x H x W x 3`` uint8 RGB) on a torch device: the PyTorch port of
    OpenCV's colored NL-means, bit-identical to :func:`nlm_opencv` (see :mod:`workers.ops.nlm_torch`).

    Raises:
        DeviceOutOfMemoryError: the batch does not fit even one search row at a time.
    """
    import torch

    from workers.ops.nlm_torch import nlm_colored_torch

    if spec.method == "none":
        return images
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    try:
        out = nlm_colored_torch(x, spec.h, spec.h_color, spec.template, spec.search)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        try:  # one row of the search window at a time: the least memory it can use
            out = nlm_colored_torch(x, spec.h, spec.h_color, spec.template, spec.search, chunk=spec.search)
        except torch.OutOfMemoryError:
            raise DeviceOutOfMemoryError(f"NL-means of {len(images)} images does not fit on {device}") from None
    return out.cpu().numpy()
