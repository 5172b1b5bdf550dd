"""Torch-free resampling: the seed's Lanczos alignment and the bicubic x4 baseline.

Kept apart from :mod:`workers.ops.upscale` so that processes which never run a model (CPU workers,
Flower, a producer talking to a broker) never import torch.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image


def resize_to_multiple(rgb: np.ndarray, multiple: int) -> np.ndarray:
    """The seed's final step: Lanczos-resize to ``floor(w/m)*m x floor(h/m)*m`` (no-op if aligned).

    Each side is at least ``m`` so a tiny image does not collapse to nothing (the seed crashed there).
    """
    h, w = rgb.shape[:2]
    target = (max(w // multiple * multiple, multiple), max(h // multiple * multiple, multiple))
    if target == (w, h):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize(target, Image.Resampling.LANCZOS))


def bicubic_x4(rgb: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The smooth baseline upscaler (OpenCV bicubic): cheap, and strong on PSNR after tone correction.
    Written into ``out`` (a contiguous ``4H x 4W x 3`` uint8 array) when given."""
    height, width = rgb.shape[:2]
    return cv2.resize(rgb, (width * 4, height * 4), dst=out, interpolation=cv2.INTER_CUBIC)


class BicubicUpscaler:
    """:func:`bicubic_x4` behind the upscaler interface (registered as ``bicubic``)."""

    def upscale(self, images: np.ndarray, channel_order: str = "rgb", tta: bool = False) -> np.ndarray:
        """Channel order and self-ensembling do not matter: bicubic treats channels and flips alike.
        Each image is resized straight into the one array returned."""
        n, height, width, channels = images.shape
        out = np.empty((n, height * 4, width * 4, channels), np.uint8)
        for image, result in zip(images, out, strict=True):
            bicubic_x4(image, result)
        return out

    def describe(self) -> dict[str, str]:
        return {"model": "bicubic"}
