"""Decode and validate untrusted image bytes; encode results as PNG.

Limits are checked before any pixel is decoded: the file size first, then the dimensions the
header declares. A 30000x30000 PNG header is refused without allocating its 2.7 GB of pixels.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from workers.errors import ImageTooLargeError, InvalidImageError

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF")
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff"})

# Never decode a truncated file into an image with a grey bottom: refuse it instead.
ImageFile.LOAD_TRUNCATED_IMAGES = False

# 8-bit modes Pillow converts to RGB exactly as the seed's ``.convert("RGB")`` does
# (alpha dropped, palette expanded, grey replicated, CMYK/YCbCr converted).
_DIRECT_MODES = frozenset({"RGB", "RGBA", "RGBX", "L", "LA", "P", "PA", "1", "CMYK", "YCbCr", "La", "RGBa"})
# 16/32-bit integer grey: scaled to 8 bits instead of clipped (convert("RGB") would clip).
_WIDE_GREY_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})


@dataclass(frozen=True)
class DecodeLimits:
    max_bytes: int
    max_pixels: int


def decode_image(data: bytes, name: str, limits: DecodeLimits) -> np.ndarray:
    """Decode ``data`` into an ``H x W x 3`` uint8 RGB array.

    Raises:
        ImageTooLargeError: the file or the declared dimensions exceed ``limits``.
        InvalidImageError: empty, not an image, truncated/corrupt, or an unsupported pixel mode.
    """
    if len(data) == 0:
        raise InvalidImageError(name, "empty file (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ImageTooLargeError(name, f"file is {len(data):,} bytes, limit is {limits.max_bytes:,} (MAX_IMAGE_BYTES)")
    try:
        with warnings.catch_warnings():
            # Pillow warns (then errors) on bombs by its own global limit; ours is checked below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        raise InvalidImageError(name, "not a recognised image (expected PNG, JPEG, WebP or TIFF)") from None
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(name, f"{exc} (MAX_IMAGE_PIXELS)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidImageError(name, f"unreadable image header: {exc}") from None
    with image:
        width, height = image.size
        if width < 1 or height < 1:
            raise InvalidImageError(name, f"image declares an empty size {width}x{height}")
        if width * height > limits.max_pixels:
            raise ImageTooLargeError(
                name, f"{width}x{height} = {width * height:,} pixels, limit is {limits.max_pixels:,} (MAX_IMAGE_PIXELS)"
            )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image.load()
        except Image.DecompressionBombError as exc:
            raise ImageTooLargeError(name, str(exc)) from None
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise InvalidImageError(name, f"truncated or corrupt {image.format} data: {exc}") from None
        return _to_rgb8(image, name)


def _to_rgb8(image: Image.Image, name: str) -> np.ndarray:
    if image.mode in _DIRECT_MODES:
        rgb = np.asarray(image.convert("RGB"))
    elif image.mode in _WIDE_GREY_MODES:
        grey = np.asarray(image).astype(np.int64)
        if grey.min() < 0 or grey.max() > 65535:
            raise InvalidImageError(name, f"{image.mode!r} pixels outside the 16-bit range")
        grey8 = ((grey * 255 + 32767) // 65535).astype(np.uint8)
        rgb = np.repeat(grey8[:, :, None], 3, axis=2)
    else:
        raise InvalidImageError(name, f"unsupported pixel mode {image.mode!r} (floating-point or exotic format)")
    return np.ascontiguousarray(rgb, dtype=np.uint8)


def encode_png(rgb: np.ndarray, compress_level: int = 1) -> bytes:
    """Encode an ``H x W x 3`` uint8 array as PNG. Level 1: fast, still lossless."""
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """Decode a PNG this pipeline wrote itself (trusted: no limits, RGB guaranteed)."""
    with Image.open(io.BytesIO(data), formats=("PNG",)) as image:
        return np.asarray(image.convert("RGB"))
