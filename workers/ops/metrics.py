"""Image quality metrics: the competition's PSNR and a standard SSIM."""

from __future__ import annotations

import math

import cv2
import numpy as np

from workers.io.submission import grey, grey_subsample

_SSIM_C1 = (0.01 * 255) ** 2
_SSIM_C2 = (0.03 * 255) ** 2
_SSIM_RADIUS = 5


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """PSNR in dB of two same-shape arrays of 0-255 values; ``inf`` when identical."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two greyscale images (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5).

    Like scikit-image, the mean leaves out the 5-pixel border where the window is incomplete.
    """
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"need two same-shape 2-D images, got {a.shape} and {b.shape}")
    x, y = a.astype(np.float64), b.astype(np.float64)

    def blur(img: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(img, (2 * _SSIM_RADIUS + 1,) * 2, 1.5, borderType=cv2.BORDER_REFLECT)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    ssim_map = ((2 * mx * my + _SSIM_C1) * (2 * cxy + _SSIM_C2)) / ((mx * mx + my * my + _SSIM_C1) * (vx + vy + _SSIM_C2))
    r = _SSIM_RADIUS if min(a.shape) > 2 * _SSIM_RADIUS else 0
    return float(ssim_map[r : a.shape[0] - r, r : a.shape[1] - r].mean())


def competition_scores(output: np.ndarray, truth: np.ndarray, row: np.ndarray | None = None) -> tuple[float, float]:
    """(PSNR, SSIM) of a 4x output against its ground truth, as the competition scores it.

    PSNR is on the submission vectors (every 8th greyscale value; ``row`` when the stored row is at
    hand), SSIM on the full-resolution greyscale images.

    Raises:
        ValueError: the output and the ground truth differ in size.
    """
    if output.shape != truth.shape:
        raise ValueError(f"output {output.shape} and ground truth {truth.shape} differ")
    values = grey_subsample(output) if row is None else row
    return psnr(values, grey_subsample(truth)), ssim(grey(output), grey(truth))
