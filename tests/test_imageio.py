import io

import numpy as np
import pytest
from PIL import Image

from tests.helpers.images import noisy_image, png_bomb, png_bytes
from workers.errors import ImageTooLargeError, InvalidImageError
from workers.io.imageio import DecodeLimits, decode_image, decode_png, encode_png

LIMITS = DecodeLimits(max_bytes=5_000_000, max_pixels=4_000_000)


def test_rgb_png_round_trips():
    rgb = noisy_image()
    assert np.array_equal(decode_image(png_bytes(rgb), "a.png", LIMITS), rgb)


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "TIFF"])
def test_other_formats_decode_to_rgb(fmt):
    out = decode_image(png_bytes(noisy_image(), fmt=fmt), f"a.{fmt.lower()}", LIMITS)
    assert out.shape == (24, 32, 3) and out.dtype == np.uint8


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA", "1", "CMYK"])
def test_modes_convert_like_pillow_convert_rgb(mode):
    source = Image.fromarray(noisy_image()).convert(mode)
    buffer = io.BytesIO()
    source.save(buffer, format="TIFF" if mode == "CMYK" else "PNG")
    out = decode_image(buffer.getvalue(), "a", LIMITS)
    assert np.array_equal(out, np.asarray(source.convert("RGB")))


def test_16bit_grey_is_scaled_not_clipped():
    grey = np.array([[0, 257, 65535, 32896]], dtype=np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="PNG")
    out = decode_image(buffer.getvalue(), "g16.png", LIMITS)
    assert out[0, :, 0].tolist() == [0, 1, 255, 128]
    assert (out[..., 0] == out[..., 2]).all()


def test_float_tiff_is_refused_with_mode_in_message():
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((4, 4), np.float32)).save(buffer, format="TIFF")
    with pytest.raises(InvalidImageError, match="mode 'F'"):
        decode_image(buffer.getvalue(), "f.tif", LIMITS)


def test_one_pixel_image_decodes():
    assert decode_image(png_bytes(noisy_image(1, 1)), "tiny.png", LIMITS).shape == (1, 1, 3)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "empty file"),
        (b"hello, I am text pretending to be a PNG\n", "not a recognised image"),
        (png_bytes(noisy_image(64, 48))[:300], "truncated or corrupt"),
        (b"GIF89a" + b"\0" * 40, "not a recognised image"),
    ],
    ids=["zero-bytes", "text", "truncated-png", "gif-not-allowed"],
)
def test_bad_bytes_raise_invalid_image_naming_the_file(data, match):
    with pytest.raises(InvalidImageError, match=match) as info:
        decode_image(data, "bad.png", LIMITS)
    assert info.value.name == "bad.png" and "bad.png" in str(info.value)


@pytest.mark.parametrize("side", [3000, 30000])
def test_huge_declared_dimensions_refused_before_decoding(side):
    """3000^2 is over our limit; 30000^2 is also over Pillow's own bomb limit: both are 'too large'."""
    with pytest.raises(ImageTooLargeError, match="MAX_IMAGE_PIXELS"):
        decode_image(png_bomb(side, side), "bomb.png", LIMITS)


def test_file_size_limit():
    with pytest.raises(ImageTooLargeError, match="MAX_IMAGE_BYTES"):
        decode_image(b"\0" * 101, "big.png", DecodeLimits(max_bytes=100, max_pixels=10))


def test_encode_png_is_lossless():
    rgb = noisy_image(17, 5)
    assert np.array_equal(decode_png(encode_png(rgb)), rgb)


def test_outputs_and_ground_truths_decode_above_pillows_own_pixel_limit(monkeypatch):
    """Pillow refuses images above 2 x Image.MAX_IMAGE_PIXELS (~179 MP), i.e. the 4x output of any input
    above ~11 MP, and ground truths were held to the input limits: 16x too few pixels."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow's limit below 16x the input limit, as in production
    inputs = DecodeLimits(max_bytes=100_000, max_pixels=1000)
    output = png_bytes(noisy_image(128, 96))  # 12,288 pixels: 16x a 32x24 input, 6x Pillow's hard limit
    assert decode_png(output, inputs.scaled(4)).shape == (96, 128, 3)
    assert decode_image(output, "gt_1.png", inputs.scaled(4)).shape == (96, 128, 3)
    with pytest.raises(ImageTooLargeError, match="MAX_IMAGE_PIXELS"):
        decode_image(output, "gt_1.png", inputs)  # the input limits still hold for inputs
    with pytest.raises(ImageTooLargeError, match="16,640 pixels, limit is 16,000"):
        decode_png(png_bytes(noisy_image(130, 128)), inputs.scaled(4))


def test_scaled_limits_cover_an_uncompressed_output_whatever_the_input_bytes():
    limits = DecodeLimits(max_bytes=1_000, max_pixels=1_000).scaled(4)
    assert limits.max_pixels == 16_000 and limits.max_bytes >= 4 * 16_000
    default = DecodeLimits(max_bytes=50 << 20, max_pixels=16_000_000).scaled(4)
    assert default.max_pixels == 256_000_000 and default.max_bytes >= max(16 * (50 << 20), 4 * 256_000_000)
