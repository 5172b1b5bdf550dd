"""Images small enough to embed in a report: thumbnails and the zoomed centre crops."""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image

from workers.report.data import EmbeddedImage

THUMB_MAX = 384  # longest edge of an embedded thumbnail, in pixels
CROP_MAX = 128  # largest zoomed crop of the 4x output, in output pixels
JPEG_QUALITY = 85


def crops(original: np.ndarray | None, output: np.ndarray, truth: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The center crop of the 4x output at 1:1 (``crop_sr``), the same region of the input upscaled
    nearest (``crop_input``) and of the ground truth at 1:1 (``crop_truth``) when they are given and
    the ground truth is the output's size."""
    h, w = output.shape[:2]
    cw, ch = min(CROP_MAX, max(1, w // 2)), min(CROP_MAX, max(1, h // 2))
    x0, y0 = (w - cw) // 2, (h - ch) // 2
    found = {"crop_sr": output[y0 : y0 + ch, x0 : x0 + cw]}
    if truth is not None and truth.shape == output.shape:
        found["crop_truth"] = truth[y0 : y0 + ch, x0 : x0 + cw]
    if original is not None:
        sx, sy = original.shape[1] / w, original.shape[0] / h
        ix0, iy0 = int(x0 * sx), int(y0 * sy)
        ix1, iy1 = max(ix0 + 1, round((x0 + cw) * sx)), max(iy0 + 1, round((y0 + ch) * sy))
        region = original[iy0:iy1, ix0:ix1]
        found["crop_input"] = cv2.resize(region, (cw, ch), interpolation=cv2.INTER_NEAREST)
    return found


def embed(rgb: np.ndarray, max_edge: int = THUMB_MAX) -> EmbeddedImage:
    """A thumbnail: kept as lossless PNG when it fits ``max_edge``, else downscaled to JPEG."""
    h, w = rgb.shape[:2]
    scale = min(1.0, max_edge / w, max_edge / h)
    buffer = io.BytesIO()
    if scale == 1.0:
        # zlib's fastest level: a report embeds up to a few hundred of these, and its readers wait on them.
        Image.fromarray(rgb).save(buffer, format="PNG", compress_level=1)
        return EmbeddedImage("image/png", buffer.getvalue(), w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    Image.fromarray(small).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return EmbeddedImage("image/jpeg", buffer.getvalue(), *size)
