"""Property-based hostile-input tests for the decode/validate stage (``workers.io.imageio.decode_image``).

Inputs:

* random bytes: empty, tiny, and bytes behind real PNG/JPEG/WebP/TIFF/GIF/BMP magic numbers;
* random corruptions of real PNG, JPEG (incl. progressive and MPO), TIFF and WebP files: truncation at
  any offset, byte flips and overwrites with boundary integers, inserted/deleted/duplicated ranges,
  ranges spliced in from other files;
* PNG chunk surgery: duplicated/removed/reordered chunks, wrong CRCs, wrong lengths, random IHDR
  dimensions/bit depths/colour types, PLTE/tRNS/zTXt/iCCP/acTL/fcTL chunks with random payloads;
* JPEG SOF segments with random markers, precisions, dimensions and components;
* TIFF IFDs with random tags, field types, counts and values (strips and tiles);
* WebP VP8/VP8L/VP8X headers with random dimensions, in front of real bitstreams;
* extreme aspect ratios inside the pixel limit (1 x 100000, 100000 x 1, ...) that must decode, and
  declared dimensions up to 2**31-1 (2**32-1 for TIFF) per side that must be refused as too large.

Properties: ``decode_image`` returns an ``H x W x 3`` uint8 C-contiguous array with
``1 <= H*W <= max_pixels``, or raises ``InvalidImageError``/``ImageTooLargeError`` whose ``.name`` is
the given name and whose message is one non-empty line. No other exception, no hang (a 2 s
Hypothesis deadline), no crash. Memory: a batch of worst cases (decompression bombs, huge declared
sizes, huge tiles, text-chunk bombs) runs in a child process under ``RLIMIT_AS`` = its warmed-up
address space + 256 MB, with a small ``max_pixels``; each case must end in a clean outcome and stay
within a budget for Python-visible (tracemalloc) and resident (VmHWM) memory. Metadata Pillow walks in
Python (JPEG segments, PNG chunks, TIFF tag values) may cost at most ~2x its size in memory, and padding
little CPU. A progressive JPEG with 20000 scans must be dealt with in well under a second (child
process, killed on timeout).

Profiles (registered here, not in conftest, and applied per test so other modules are unaffected):

* default (``imageio-fuzz``): derandomized (same examples every run), no example database; the
  whole file takes ~11 s on an idle 2-core machine::

      .venv/bin/pytest -q tests/test_fuzz_imageio.py

* ``thorough``: ~17x the examples from fresh random seeds, failures saved to and replayed from
  ``.hypothesis/fuzz-imageio`` (git-ignored); ~2.5 min of CPU::

      HYPOTHESIS_PROFILE=thorough .venv/bin/pytest -q tests/test_fuzz_imageio.py

The bugs these tests found (exceptions escaping from Pillow, a WebP canvas allocated before the size
check, unbounded JPEG scans, metadata bloat) are fixed in ``workers/imageio.py``; their minimal
inputs stay here as regression tests (REGRESSIONS and the memory/CPU cases).
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import time
import tracemalloc
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase
from PIL import Image, PngImagePlugin

from tests.helpers.images import noisy_image
from tests.helpers.paths import REPO
from workers.errors import ImageTooLargeError, InvalidImageError, PermanentImageError
from workers.io.imageio import DecodeLimits, decode_image

# ---------------------------------------------------------------------------------------------
# Profiles and limits
# ---------------------------------------------------------------------------------------------

_BASE = {
    "deadline": 2000,  # ms per example: a hang fails the example instead of stalling the run
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    "print_blob": True,
}
settings.register_profile("imageio-fuzz", max_examples=60, derandomize=True, database=None, **_BASE)
settings.register_profile(
    "thorough",
    max_examples=1000,
    derandomize=False,
    database=DirectoryBasedExampleDatabase(str(REPO / ".hypothesis" / "fuzz-imageio")),
    **_BASE,
)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "imageio-fuzz")
FUZZ = settings.get_profile(PROFILE)


def fuzz(scale: float = 1.0, **overrides: object) -> settings:
    """This module's profile, with ``scale`` x its example count (cheap tests run more examples)."""
    return settings(FUZZ, max_examples=max(1, int(FUZZ.max_examples * scale)), **overrides)


MAX_PIXELS = 4096  # small, so that decoding any accepted example is fast
LIMITS = DecodeLimits(max_bytes=1_000_000, max_pixels=MAX_PIXELS)
NAMES = st.sampled_from(["x.png", "photos/IMG 0001.JPG", "ünïcödé-名前.webp", "no-extension", "a" * 200 + ".tif"])

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL")  # "Corrupt EXIF data" & co.


# ---------------------------------------------------------------------------------------------
# The property
# ---------------------------------------------------------------------------------------------


def check_decode(data: bytes, name: str = "x.png", limits: DecodeLimits = LIMITS) -> type[PermanentImageError] | None:
    """Decode; assert the contract; return the error class raised, or None for a decoded image.

    Anything but a PermanentImageError propagates unchanged, so Hypothesis shrinks and reports it.
    """
    try:
        rgb = decode_image(data, name, limits)
    except PermanentImageError as exc:
        assert type(exc) in (InvalidImageError, ImageTooLargeError), type(exc)
        assert exc.name == name
        message = str(exc)
        assert message.strip() and exc.reason.strip(), repr(message)
        assert "\n" not in message and "\r" not in message, repr(message)
        assert message.startswith(f"{name}: ")
        return type(exc)
    assert isinstance(rgb, np.ndarray)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3, (rgb.dtype, rgb.shape)
    assert rgb.flags.c_contiguous
    height, width = rgb.shape[:2]
    assert 1 <= height * width <= limits.max_pixels, rgb.shape
    return None


def check_too_large(data: bytes, name: str = "huge.img", limits: DecodeLimits = LIMITS) -> None:
    assert check_decode(data, name, limits) is ImageTooLargeError


# ---------------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# (bit depth, colour type) pairs Pillow maps to a mode; anything else is not a valid PNG header.
PNG_VALID_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_ihdr(width: int, height: int, depth: int = 8, colour: int = 2, compression: int = 0, filtering: int = 0,
             interlace: int = 0) -> bytes:
    return png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, compression, filtering, interlace))


def png_file(*chunks: bytes) -> bytes:
    return PNG_SIGNATURE + b"".join(chunks)


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of each chunk of a well-formed PNG."""
    out, pos = [], len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        out.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return out


def png_image_data(width: int, height: int, depth: int, colour: int) -> bytes:
    """Zero scanlines for a small image (filter byte + row), zlib-compressed: an IDAT payload."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour, 1)
    row = (width * channels * max(depth, 1) + 7) // 8
    return _deflated_zeros(min((row + 1) * height, 1 << 16))  # enough for anything within MAX_PIXELS


@cache
def _deflated_zeros(size: int) -> bytes:
    return zlib.compress(b"\0" * size, 1)


def jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(offset, marker, size including the 2 marker bytes) of each segment up to and including SOS."""
    out, pos = [], 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        out.append((pos, marker, length + 2))
        if marker == 0xDA:
            break
        pos += length + 2
    return out


def jpeg_with_sof(jpeg: bytes, marker: int, precision: int, height: int, width: int,
                  components: list[tuple[int, int, int]]) -> bytes:
    """``jpeg`` with its SOF segment replaced (``components``: (id, sampling HV byte, quant table))."""
    pos, _, size = next(s for s in jpeg_segments(jpeg) if s[1] in SOF_MARKERS)
    body = struct.pack(">BHHB", precision, height, width, len(components))
    body += b"".join(struct.pack(">BBB", *c) for c in components)
    return jpeg[:pos] + bytes((0xFF, marker)) + struct.pack(">H", len(body) + 2) + body + jpeg[pos + size :]


SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})

# TIFF field types: struct code per value (rationals are two values per count).
TIFF_TYPES = {1: "B", 2: "B", 3: "H", 4: "I", 5: "I", 6: "b", 7: "B", 8: "h", 9: "i", 10: "i", 11: "f", 12: "d",
              13: "I", 16: "Q", 17: "q", 18: "Q"}
PIXELS = object()  # placeholder value: replaced by the offset of the pixel data


@dataclass(frozen=True)
class TiffEntry:
    tag: int
    type: int
    values: tuple = ()
    count: int | None = None  # None: len(values) (halved for rationals); else written as is
    raw: bytes | None = None  # the 4-byte value/offset field, written as is (with ``count``)
    payload: bytes | None = None  # the values' bytes, written as is (with ``count``)


def tiff_entry(tag: int, typ: int, *values: object) -> TiffEntry:
    return TiffEntry(tag, typ, tuple(values))


def tiff_file(entries: list[TiffEntry], pixels: bytes, big_endian: bool = False) -> bytes:
    """A one-IFD TIFF: entries sorted by tag, long values after the IFD, then ``pixels``."""
    e = ">" if big_endian else "<"
    entries = sorted(entries, key=lambda entry: entry.tag)
    ifd_end = 8 + 2 + 12 * len(entries) + 4

    def payload(entry: TiffEntry, pixel_offset: int) -> bytes:
        if entry.payload is not None:
            return entry.payload
        code = TIFF_TYPES.get(entry.type, "B")
        values = [pixel_offset if v is PIXELS else v for v in entry.values]
        return struct.pack(e + code * len(values), *values)

    sizes = [0 if entry.raw is not None else len(payload(entry, 0)) for entry in entries]
    extra_size = sum(size + (size & 1) for size in sizes if size > 4)
    pixel_offset = ifd_end + extra_size
    fields, extra = [], b""
    for entry, size in zip(entries, sizes, strict=True):
        pair = 2 if entry.type in (5, 10) else 1
        count = entry.count if entry.count is not None else len(entry.values) // pair
        if entry.raw is not None:
            field = entry.raw[:4].ljust(4, b"\0")
        elif size <= 4:
            field = payload(entry, pixel_offset).ljust(4, b"\0")
        else:
            field = struct.pack(e + "I", ifd_end + len(extra))
            extra += payload(entry, pixel_offset) + b"\0" * (size & 1)
        fields.append(struct.pack(e + "HHI", entry.tag, entry.type, count & 0xFFFFFFFF) + field)
    header = (b"MM\0*" if big_endian else b"II*\0") + struct.pack(e + "I", 8)
    return header + struct.pack(e + "H", len(entries)) + b"".join(fields) + b"\0\0\0\0" + extra + pixels


def tiff_strips(width: int, height: int, pixels: bytes, spp: int = 1, bps: int = 8, photometric: int = 1,
                compression: int = 1, rows_per_strip: int | None = None) -> list[TiffEntry]:
    return [
        tiff_entry(256, 4, width), tiff_entry(257, 4, height), tiff_entry(258, 3, *[bps] * spp),
        tiff_entry(259, 3, compression), tiff_entry(262, 3, photometric), tiff_entry(273, 4, PIXELS),
        tiff_entry(277, 3, spp), tiff_entry(278, 4, height if rows_per_strip is None else rows_per_strip),
        tiff_entry(279, 4, len(pixels)),
    ]


def riff_webp(*chunks: tuple[bytes, bytes]) -> bytes:
    body = b"WEBP" + b"".join(k + struct.pack("<I", len(p)) + p + b"\0" * (len(p) & 1) for k, p in chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def webp_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 12
    while pos + 8 <= len(data):
        kind, (length,) = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])
        out.append((kind, data[pos + 8 : pos + 8 + length]))
        pos += 8 + length + (length & 1)
    return out


def vp8l_with_size(vp8l: bytes, width: int, height: int) -> bytes:
    """A VP8L bitstream with its 14-bit (size - 1) fields replaced."""
    (bits,) = struct.unpack("<I", vp8l[1:5])
    bits = (bits & ~((1 << 28) - 1)) | ((width - 1) & 0x3FFF) | (((height - 1) & 0x3FFF) << 14)
    return vp8l[:1] + struct.pack("<I", bits) + vp8l[5:]


def vp8_with_size(vp8: bytes, width: int, height: int) -> bytes:
    """A VP8 key frame with its 14-bit size fields replaced (the 2-bit scale fields kept)."""
    w, h = struct.unpack("<HH", vp8[6:10])
    return vp8[:6] + struct.pack("<HH", (w & 0xC000) | (width & 0x3FFF), (h & 0xC000) | (height & 0x3FFF)) + vp8[10:]


def vp8x_payload(flags: int, width: int, height: int) -> bytes:
    return struct.pack("<I", flags) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Seed corpus: small real files of every format and flavour (built once)
# ---------------------------------------------------------------------------------------------


@cache
def seeds() -> dict[str, bytes]:
    rgb = Image.fromarray(noisy_image(16, 12))
    grey16 = Image.fromarray(noisy_image(16, 12)[..., 0].astype(np.uint16) * 257)
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", "hello " * 20, zip=True)
    text.add_itxt("Title", "titre ✓", lang="fr", zip=False)
    files = {
        "png-rgb": encode(rgb, "PNG"),
        "png-grey": encode(rgb.convert("L"), "PNG"),
        "png-1bit": encode(rgb.convert("1"), "PNG"),
        "png-palette-trns": encode(rgb.convert("P"), "PNG", transparency=3),
        "png-rgba": encode(rgb.convert("RGBA"), "PNG"),
        "png-la": encode(rgb.convert("LA"), "PNG"),
        "png-grey16": encode(grey16, "PNG"),
        "png-text-icc": encode(rgb, "PNG", pnginfo=text, icc_profile=b"\0" * 132),
        "png-apng": encode(rgb, "PNG", save_all=True, append_images=[rgb.transpose(Image.Transpose.FLIP_TOP_BOTTOM)]),
        "jpeg-420": encode(rgb, "JPEG", quality=80),
        "jpeg-444-exif": encode(rgb, "JPEG", subsampling=0, exif=b"Exif\0\0II*\0\x08\0\0\0\0\0\0\0\0\0"),
        "jpeg-grey": encode(rgb.convert("L"), "JPEG"),
        "jpeg-cmyk": encode(rgb.convert("CMYK"), "JPEG"),
        "jpeg-progressive": encode(rgb, "JPEG", progressive=True),
        "jpeg-icc": encode(rgb, "JPEG", icc_profile=b"\0" * 300),
        "mpo": encode(rgb, "MPO", save_all=True, append_images=[rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]),
        "tiff-raw": encode(rgb, "TIFF"),
        "tiff-lzw": encode(rgb, "TIFF", compression="tiff_lzw"),
        "tiff-deflate-grey": encode(rgb.convert("L"), "TIFF", compression="tiff_adobe_deflate"),
        "tiff-jpeg": encode(rgb, "TIFF", compression="jpeg"),
        "tiff-packbits-palette": encode(rgb.convert("P"), "TIFF", compression="packbits"),
        "tiff-group4": encode(rgb.convert("1"), "TIFF", compression="group4"),
        "tiff-tiled": encode(rgb, "TIFF", tile=(16, 16)),
        "tiff-grey16": encode(grey16, "TIFF"),
        "tiff-cmyk": encode(rgb.convert("CMYK"), "TIFF"),
        "tiff-float": encode(Image.fromarray(noisy_image(16, 12)[..., 0].astype(np.float32)), "TIFF"),
        "webp-lossy": encode(rgb, "WEBP", quality=50),
        "webp-lossless": encode(rgb, "WEBP", lossless=True),
        "webp-alpha": encode(rgb.convert("RGBA"), "WEBP", quality=50),
        "webp-animated": encode(rgb, "WEBP", save_all=True, lossless=True,
                                append_images=[rgb.transpose(Image.Transpose.FLIP_TOP_BOTTOM)]),
    }
    return files


def seeds_of(prefixes: tuple[str, ...]) -> list[str]:
    return sorted(name for name in seeds() if name.startswith(prefixes))


def test_every_seed_decodes():
    """The corpus itself is valid (except the float TIFF, refused by design): mutations start from real files."""
    for name, data in seeds().items():
        outcome = check_decode(data, name, DecodeLimits(1_000_000, 1_000_000))
        assert outcome is (InvalidImageError if name == "tiff-float" else None), name


# ---------------------------------------------------------------------------------------------
# Random bytes
# ---------------------------------------------------------------------------------------------

MAGICS = {
    "none": b"",
    "png": PNG_SIGNATURE,
    "png-ihdr": PNG_SIGNATURE + b"\0\0\0\x0dIHDR",
    "jpeg": b"\xff\xd8\xff",
    "jpeg-jfif": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
    "jpeg-exif": b"\xff\xd8\xff\xe1",
    "webp-vp8": b"RIFF\0\0\0\0WEBPVP8 ",
    "webp-vp8l": b"RIFF\0\0\0\0WEBPVP8L",
    "webp-vp8x": b"RIFF\0\0\0\0WEBPVP8X",
    "tiff-le": b"II*\0",
    "tiff-be": b"MM\0*",
    "bigtiff": b"II+\0\x08\0\0\0",
    "gif87": b"GIF87a",
    "gif89": b"GIF89a",
    "bmp": b"BM",
}


@fuzz(scale=4)
@given(magic=st.sampled_from(sorted(MAGICS)), tail=st.binary(max_size=300), name=NAMES)
@example(magic="none", tail=b"", name="empty.png")
@example(magic="none", tail=b"\0", name="one-byte.png")
@example(magic="png", tail=b"", name="signature-only.png")
def test_random_bytes_are_refused_cleanly(magic, tail, name):
    data = MAGICS[magic] + tail
    outcome = check_decode(data, name)
    if magic.startswith(("gif", "bmp")) or not data:
        assert outcome is InvalidImageError


@fuzz()
@given(data=st.binary(min_size=0, max_size=16), name=NAMES)
def test_tiny_inputs_are_refused(data, name):
    assert check_decode(data, name) is InvalidImageError


# ---------------------------------------------------------------------------------------------
# Random corruptions of real files
# ---------------------------------------------------------------------------------------------

BOUNDARY_INTS = [0, 1, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]

_op = st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, 1 << 16)),
    st.tuples(st.just("flip"), st.integers(0, 1 << 16), st.integers(0, 7)),
    st.tuples(st.just("set"), st.integers(0, 1 << 16), st.integers(0, 255)),
    st.tuples(st.just("int"), st.integers(0, 1 << 16), st.sampled_from(BOUNDARY_INTS), st.sampled_from([">H", "<H", ">I", "<I"])),
    st.tuples(st.just("insert"), st.integers(0, 1 << 16), st.binary(min_size=1, max_size=32)),
    st.tuples(st.just("delete"), st.integers(0, 1 << 16), st.integers(1, 256)),
    st.tuples(st.just("duplicate"), st.integers(0, 1 << 16), st.integers(1, 256), st.integers(0, 1 << 16)),
    st.tuples(st.just("splice"), st.integers(0, 1 << 16), st.sampled_from(sorted(seeds())), st.integers(0, 1 << 16),
              st.integers(1, 512)),
)


def mutate(data: bytes, ops: list[tuple]) -> bytes:
    buf = bytearray(data)
    for op in ops:
        if not buf:
            break
        kind, pos = op[0], op[1] % len(buf)
        if kind == "truncate":
            del buf[pos:]
        elif kind == "flip":
            buf[pos] ^= 1 << op[2]
        elif kind == "set":
            buf[pos] = op[2]
        elif kind == "int":
            packed = struct.pack(op[3], op[2] & (0xFFFF if op[3].endswith("H") else 0xFFFFFFFF))
            buf[pos : pos + len(packed)] = packed
        elif kind == "insert":
            buf[pos:pos] = op[2]
        elif kind == "delete":
            del buf[pos : pos + op[2]]
        elif kind == "duplicate":
            buf[op[3] % len(buf) : op[3] % len(buf)] = buf[pos : pos + op[2]]
        elif kind == "splice":
            other = seeds()[op[2]]
            start = op[3] % len(other)
            buf[pos : pos + op[4]] = other[start : start + op[4]]
    return bytes(buf)


@pytest.mark.parametrize("family", ["png", "jpeg", "mpo", "tiff", "webp"])
@fuzz(scale=1.5)
@given(data=st.data(), ops=st.lists(_op, min_size=1, max_size=5), name=NAMES)
def test_corrupted_real_files_fail_cleanly(family, data, ops, name):
    seed = data.draw(st.sampled_from(seeds_of((family,))), label="seed")
    check_decode(mutate(seeds()[seed], ops), name)


@pytest.mark.parametrize("family", ["png", "jpeg", "tiff", "webp"])
@fuzz()
@given(data=st.data(), cut=st.integers(0, 1 << 16))
def test_truncation_at_any_offset(family, data, cut):
    seed = seeds()[data.draw(st.sampled_from(seeds_of((family,))), label="seed")]
    truncated = seed[: cut % len(seed)]
    outcome = check_decode(truncated, "cut.img")
    if len(truncated) < 8:
        assert outcome is InvalidImageError


# ---------------------------------------------------------------------------------------------
# PNG chunk surgery
# ---------------------------------------------------------------------------------------------

PNG_KINDS = [b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"tEXt", b"zTXt",
             b"iTXt", b"bKGD", b"pHYs", b"sBIT", b"tIME", b"eXIf", b"acTL", b"fcTL", b"fdAT", b"abCd", b"\0\0\0\0"]


def _zlib_payload(draw) -> bytes:
    """Random deflated bytes, or deflated zeros around Pillow's 1 MB (ImageFile.SAFEBLOCK) text chunk limit."""
    if draw(st.booleans()):
        return zlib.compress(draw(st.binary(max_size=64)))
    return _deflated_zeros(draw(st.sampled_from([0, 1, 1 << 10, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, 1 << 22])))


_png_surgery = st.one_of(
    st.tuples(st.just("remove"), st.integers(0, 63)),
    st.tuples(st.just("duplicate"), st.integers(0, 63), st.integers(0, 63)),
    st.tuples(st.just("swap"), st.integers(0, 63), st.integers(0, 63)),
    st.tuples(st.just("bad-crc"), st.integers(0, 63), st.integers(0, 0xFFFFFFFF)),
    st.tuples(st.just("bad-length"), st.integers(0, 63), st.sampled_from(BOUNDARY_INTS + [13, 12, 14])),
    st.tuples(st.just("insert"), st.integers(0, 63), st.sampled_from(PNG_KINDS), st.binary(max_size=64)),
    st.tuples(st.just("insert-zlib"), st.integers(0, 63), st.sampled_from([b"zTXt", b"iCCP", b"iTXt", b"IDAT"])),
    st.tuples(st.just("payload"), st.integers(0, 63), st.binary(max_size=40)),
)


@fuzz(scale=3)
@given(data=st.data(), ops=st.lists(_png_surgery, min_size=1, max_size=4), name=NAMES)
def test_png_chunk_surgery_fails_cleanly(data, ops, name):
    seed = data.draw(st.sampled_from(seeds_of(("png",))), label="seed")
    chunks = [png_chunk(kind, payload) for kind, payload in png_chunks(seeds()[seed])]
    parsed = png_chunks(seeds()[seed])
    for op in ops:
        i = op[1] % (len(chunks) + 1)
        kind = op[0]
        if kind == "remove" and i < len(chunks):
            del chunks[i]
        elif kind == "duplicate" and chunks:
            chunks.insert(op[2] % (len(chunks) + 1), chunks[i % len(chunks)])
        elif kind == "swap" and chunks:
            j = op[2] % len(chunks)
            chunks[i % len(chunks)], chunks[j] = chunks[j], chunks[i % len(chunks)]
        elif kind == "bad-crc" and chunks:
            c = chunks[i % len(chunks)]
            chunks[i % len(chunks)] = c[:-4] + struct.pack(">I", op[2])
        elif kind == "bad-length" and chunks:
            c = chunks[i % len(chunks)]
            chunks[i % len(chunks)] = struct.pack(">I", op[2]) + c[4:]
        elif kind == "insert":
            chunks.insert(i, png_chunk(op[2], op[3]))
        elif kind == "insert-zlib":
            payload = _zlib_payload(data.draw)
            prefix = {b"zTXt": b"key\0\0", b"iCCP": b"icc\0\0", b"iTXt": b"key\0\1\0\0\0"}.get(op[2], b"")
            chunks.insert(i, png_chunk(op[2], prefix + payload))
        elif kind == "payload" and parsed:
            kind_, _ = parsed[i % len(parsed)]
            chunks.insert(i, png_chunk(kind_, op[2]))
    check_decode(png_file(*chunks), name)


_dimension = st.one_of(
    st.integers(0, 300),
    st.integers(0, 2**31 - 1),
    st.sampled_from([0, 1, 64, 65, 4095, 4096, 4097, 65535, 65536, 100_000, 2**24, 2**31 - 1, 2**31, 2**32 - 1]),
)


@fuzz(scale=3)
@given(
    width=_dimension, height=_dimension,
    depth=st.one_of(st.sampled_from([1, 2, 4, 8, 16]), st.integers(0, 255)),
    colour=st.one_of(st.sampled_from([0, 2, 3, 4, 6]), st.integers(0, 255)),
    compression=st.sampled_from([0, 0, 0, 1, 255]), filtering=st.sampled_from([0, 0, 0, 1, 255]),
    interlace=st.sampled_from([0, 1, 2, 255]),
    palette=st.one_of(st.none(), st.binary(max_size=3 * 257)), trns=st.one_of(st.none(), st.binary(max_size=300)),
    name=NAMES,
)
def test_png_ihdr_fields(width, height, depth, colour, compression, filtering, interlace, palette, trns, name):
    """Random IHDR fields; a header Pillow accepts that declares more than max_pixels is 'too large'."""
    chunks = [png_ihdr(width, height, depth, colour, compression, filtering, interlace)]
    if palette is not None:
        chunks.append(png_chunk(b"PLTE", palette))
    if trns is not None:
        chunks.append(png_chunk(b"tRNS", trns))
    chunks += [png_chunk(b"IDAT", png_image_data(min(width, 4096), min(height, 4096), depth, colour)),
               png_chunk(b"IEND", b"")]
    outcome = check_decode(png_file(*chunks), name)
    valid_header = depth in PNG_VALID_DEPTHS.get(colour, ()) and filtering == 0 and palette is None and trns is None
    if valid_header and width >= 1 and height >= 1 and width * height > MAX_PIXELS:
        assert outcome is ImageTooLargeError


# ---------------------------------------------------------------------------------------------
# JPEG SOF
# ---------------------------------------------------------------------------------------------

_component = st.tuples(st.integers(0, 255), st.one_of(st.sampled_from([0x11, 0x21, 0x22, 0x12, 0x41, 0x44]),
                                                      st.integers(0, 255)), st.integers(0, 3))


@fuzz(scale=3)
@given(
    data=st.data(),
    marker=st.sampled_from(sorted(SOF_MARKERS)),
    precision=st.one_of(st.just(8), st.sampled_from([0, 1, 2, 12, 16, 255])),
    height=st.one_of(st.integers(0, 70), st.integers(0, 65535), st.sampled_from([0, 1, 4096, 4097, 65535])),
    width=st.one_of(st.integers(0, 70), st.integers(0, 65535), st.sampled_from([0, 1, 4096, 4097, 65535])),
    name=NAMES,
)
def test_jpeg_sof_fields(data, marker, precision, height, width, name):
    """Random SOF fields; an 8-bit 1/3/4-component SOF declaring more than max_pixels is 'too large'."""
    seed = data.draw(st.sampled_from(seeds_of(("jpeg", "mpo"))), label="seed")
    original = next(seeds()[seed][p + 10 : p + size] for p, m, size in jpeg_segments(seeds()[seed]) if m in SOF_MARKERS)
    keep = data.draw(st.booleans(), label="keep components")
    if keep:
        components = [tuple(original[i : i + 3]) for i in range(0, len(original), 3)]
    else:
        components = data.draw(st.lists(_component, max_size=6), label="components")
    outcome = check_decode(jpeg_with_sof(seeds()[seed], marker, precision, height, width, components), name)
    if precision == 8 and len(components) in (1, 3, 4) and width >= 1 and height >= 1 and width * height > MAX_PIXELS:
        assert outcome is ImageTooLargeError


# ---------------------------------------------------------------------------------------------
# TIFF IFDs
# ---------------------------------------------------------------------------------------------

TIFF_TAGS = [254, 256, 257, 258, 259, 262, 266, 270, 273, 274, 277, 278, 279, 282, 283, 284, 296, 301, 317, 320, 322,
             323, 324, 325, 330, 338, 339, 340, 341, 347, 530, 531, 532, 700, 33723, 34377, 34665, 34675, 34853, 50838]


@st.composite
def tiff_entries(draw) -> TiffEntry:
    """One IFD entry: a tag (known or any), a type (valid or not), then random bytes or a boundary value."""
    tag = draw(st.one_of(st.sampled_from(TIFF_TAGS), st.integers(0, 65535)))
    typ = draw(st.sampled_from([3, 4, 1, 2, 5, 7, 0, 6, 8, 9, 10, 11, 12, 13, 16, 17, 18, 255]))
    count = draw(st.integers(1, 8))
    how = draw(st.integers(0, 9))
    if how == 0:  # a count (and offset) with no data behind it
        return TiffEntry(tag, typ, count=draw(st.sampled_from(BOUNDARY_INTS)), raw=draw(st.binary(min_size=4, max_size=4)))
    code = TIFF_TYPES.get(typ, "B")
    per_count = struct.calcsize(code) * (2 if typ in (5, 10) else 1)
    if how <= 4:
        return TiffEntry(tag, typ, count=count, payload=draw(st.binary(min_size=count * per_count,
                                                                       max_size=count * per_count)))
    value = draw(st.sampled_from(BOUNDARY_INTS))
    if code in "fd":
        value = float(value)
    elif code.islower():  # signed: wrap into range
        bits = struct.calcsize(code) * 8
        value = (value + (1 << bits - 1)) % (1 << bits) - (1 << bits - 1)
    else:
        value %= 1 << struct.calcsize(code) * 8
    return TiffEntry(tag, typ, (value,) * count * (2 if typ in (5, 10) else 1))


_tiff_dim = st.one_of(st.integers(0, 80), st.sampled_from([0, 1, 4096, 4097, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1]))


# (samples per pixel, bits per sample, photometric, extra samples) of layouts Pillow decodes.
TIFF_LAYOUTS = [(1, 8, 1, None), (3, 8, 2, None), (1, 1, 0, None), (1, 16, 1, None), (4, 8, 5, None), (1, 8, 3, None),
                (2, 8, 1, 1), (2, 8, 1, 2), (4, 8, 2, 1), (4, 8, 2, 2), (1, 4, 1, None), (3, 16, 2, None)]


@st.composite
def tiff_inputs(draw) -> bytes:
    """Half the time a decodable base layout, half the time random core fields; then 0-4 hostile entries."""
    if draw(st.booleans()):
        spp, bps, photometric, extra_samples = draw(st.sampled_from(TIFF_LAYOUTS))
        width, height = draw(st.integers(1, 12)), draw(st.integers(1, 12))
        compression = 1
        pixels = bytes((width * spp * bps + 7) // 8 * height)
        # palette: a ColorMap of the right size
        extra = [tiff_entry(320, 3, *[0x8000] * 3 * (1 << bps))] if photometric == 3 else []
        if extra_samples is not None:
            extra.append(tiff_entry(338, 3, extra_samples))
    else:
        width, height = draw(_tiff_dim), draw(_tiff_dim)
        spp = draw(st.sampled_from([1, 1, 3, 3, 4, 2, 0, 5, 65535]))
        bps = draw(st.sampled_from([1, 2, 4, 8, 8, 12, 16, 32, 64, 0, 65535]))
        photometric = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 32844, 34892, 65535]))
        compression = draw(st.sampled_from([1, 1, 2, 3, 4, 5, 6, 7, 8, 32773, 32946, 34712, 50000, 65535]))
        pixels = draw(st.one_of(st.binary(max_size=600), st.integers(0, 4096).map(bytes)))
        extra = []
    entries = {e.tag: e for e in tiff_strips(width, height, pixels, min(spp, 8) or 1, bps, photometric, compression)}
    entries[277] = tiff_entry(277, 3, spp)
    entries.update({e.tag: e for e in extra})
    if draw(st.booleans()):  # tiles instead of strips
        for tag in (273, 278, 279):
            entries.pop(tag)
        tile = st.sampled_from([16, 32, 0, 17, 256, 65536, 2**31 - 16, 2**32 - 16])
        entries.update({322: tiff_entry(322, 4, draw(tile)), 323: tiff_entry(323, 4, draw(tile)),
                        324: tiff_entry(324, 4, PIXELS), 325: tiff_entry(325, 4, len(pixels))})
    else:
        entries[278] = tiff_entry(278, 4, draw(st.sampled_from([height, 1, 16, 0, 2**32 - 1])))
    for entry in draw(st.lists(tiff_entries(), max_size=4)):
        entries[entry.tag] = entry
    return tiff_file(list(entries.values()), pixels, big_endian=draw(st.booleans()))


@fuzz(scale=4)
@given(data=tiff_inputs(), name=NAMES)
def test_tiff_ifd_fields(data, name):
    outcome = check_decode(data, name)
    event(f"outcome: {'decoded' if outcome is None else outcome.__name__}")


def _tiff_minimal(*extra: TiffEntry, spp: int = 1, photometric: int = 1, pixels: bytes = b"\x10" * 4) -> bytes:
    entries = {e.tag: e for e in tiff_strips(2, 2, pixels, spp=spp, photometric=photometric)}
    entries.update({e.tag: e for e in extra})
    return tiff_file(list(entries.values()), pixels)


def _tiff_tiled(tile_width: int, tile_height: int) -> bytes:
    entries = {e.tag: e for e in tiff_strips(2, 2, b"\x10" * 16)}
    for tag in (273, 278, 279):
        entries.pop(tag)
    entries.update({322: tiff_entry(322, 4, tile_width), 323: tiff_entry(323, 4, tile_height),
                    324: tiff_entry(324, 4, PIXELS), 325: tiff_entry(325, 4, 16)})
    return tiff_file(list(entries.values()), b"\x10" * 16)


# Minimal inputs of exceptions that once escaped decode_image (found by the fuzz tests below), each with
# what it must give now: a clear per-file error, or the decoded pixels.
REGRESSIONS = {
    "tiff-xmp-as-short-TypeError": (_tiff_minimal(tiff_entry(700, 3, 1)), InvalidImageError),
    "tiff-negative-colormap-OverflowError": (
        _tiff_minimal(tiff_entry(320, 8, *[-1] * 768), photometric=3), InvalidImageError),
    "tiff-tile-width-over-int-max-OverflowError": (_tiff_tiled(0xFFFFFFF0, 16), InvalidImageError),
    # premultiplied grey + alpha ('La'): un-premultiplied like RGBa -> RGB, (100, alpha 128) -> 199
    "tiff-la-ValueError": (_tiff_minimal(tiff_entry(338, 3, 1), spp=2, pixels=bytes([100, 128] * 4)),
                           np.full((2, 2, 3), 199, np.uint8)),
    "png-palette-trns-without-plte-AssertionError": (
        png_file(png_ihdr(1, 1, 8, 3), png_chunk(b"tRNS", b"\0"), png_chunk(b"IDAT", zlib.compress(b"\0\0")),
                 png_chunk(b"IEND", b"")),
        InvalidImageError),
    "png-empty-iccp-after-idat-IndexError": (
        png_file(png_ihdr(1, 1, 8, 0), png_chunk(b"IDAT", zlib.compress(b"\0\0")), png_chunk(b"iCCP", b""),
                 png_chunk(b"IEND", b"")),
        InvalidImageError),
}


@pytest.mark.parametrize(("data", "expected"), list(REGRESSIONS.values()), ids=list(REGRESSIONS))
def test_regressions(data, expected):
    outcome = check_decode(data, "hostile.img")
    if isinstance(expected, np.ndarray):
        assert outcome is None and np.array_equal(decode_image(data, "hostile.img", LIMITS), expected)
    else:
        assert outcome is expected


# ---------------------------------------------------------------------------------------------
# WebP headers
# ---------------------------------------------------------------------------------------------


@fuzz(scale=3)
@given(
    data=st.data(),
    kind=st.sampled_from(["VP8 ", "VP8L", "VP8X-still", "VP8X-animated", "VP8X-random"]),
    width=st.one_of(st.integers(1, 100), st.integers(1, 1 << 24), st.sampled_from([1, 4096, 4097, 16383, 16384, 1 << 24])),
    height=st.one_of(st.integers(1, 100), st.integers(1, 1 << 24), st.sampled_from([1, 4096, 4097, 16383, 16384, 1 << 24])),
    name=NAMES,
)
def test_webp_header_dimensions(data, kind, width, height, name):
    """Random VP8/VP8L/VP8X sizes in front of real bitstreams; a valid header over the limit is 'too large'."""
    lossy, lossless = webp_chunks(seeds()["webp-lossy"])[0][1], webp_chunks(seeds()["webp-lossless"])[0][1]
    if kind == "VP8 ":
        width, height = width & 0x3FFF, height & 0x3FFF
        webp, valid = riff_webp((b"VP8 ", vp8_with_size(lossy, width, height))), width >= 1 and height >= 1
    elif kind == "VP8L":
        width, height = (width - 1) % 16384 + 1, (height - 1) % 16384 + 1
        webp, valid = riff_webp((b"VP8L", vp8l_with_size(lossless, width, height))), True
    elif kind == "VP8X-animated":  # the canvas may be larger than the 16x12 frames, not smaller
        chunks = webp_chunks(seeds()["webp-animated"])
        webp = riff_webp((b"VP8X", vp8x_payload(chunks[0][1][0], width, height)), *chunks[1:])
        valid = width >= 16 and height >= 12
    else:  # a still image must have canvas == frame size; random flags may claim chunks that are absent
        flags = 0 if kind == "VP8X-still" else data.draw(st.integers(0, 255), label="flags")
        webp, valid = riff_webp((b"VP8X", vp8x_payload(flags, width, height)), (b"VP8L", lossless)), False
    outcome = check_decode(webp, name)
    if valid and width * height > MAX_PIXELS:
        assert outcome is ImageTooLargeError


# ---------------------------------------------------------------------------------------------
# Extreme but legal shapes, and huge declared dimensions
# ---------------------------------------------------------------------------------------------


def _strip_image(width: int, height: int) -> Image.Image:
    values = (np.arange(width * height, dtype=np.uint32) * 2654435761 >> 24).astype(np.uint8)
    return Image.fromarray(np.stack([values, values ^ 0x55, values // 2], axis=-1).reshape(height, width, 3))


@pytest.mark.parametrize(
    ("fmt", "width", "height"),
    [
        ("PNG", 1, 100_000), ("PNG", 100_000, 1), ("TIFF", 1, 100_000), ("TIFF", 100_000, 1),
        ("JPEG", 1, 65_500), ("JPEG", 65_500, 1), ("WEBP", 1, 16_383), ("WEBP", 16_383, 1),
    ],
)
def test_extreme_aspect_ratios_within_the_limit_decode(fmt, width, height):
    image = _strip_image(width, height)
    options = {"lossless": True} if fmt == "WEBP" else {"quality": 95} if fmt == "JPEG" else {}
    data = encode(image, fmt, **options)
    limits = DecodeLimits(max_bytes=10_000_000, max_pixels=width * height)
    assert check_decode(data, "strip", limits) is None
    rgb = decode_image(data, "strip", limits)
    assert rgb.shape == (height, width, 3)
    if fmt != "JPEG":
        assert np.array_equal(rgb, np.asarray(image))
    one_less = DecodeLimits(max_bytes=10_000_000, max_pixels=width * height - 1)
    assert check_decode(data, "strip", one_less) is ImageTooLargeError


def _huge_png(width: int, height: int) -> bytes:
    return png_file(png_ihdr(width, height), png_chunk(b"IDAT", _deflated_zeros(1 << 16)), png_chunk(b"IEND", b""))


def _huge_jpeg(width: int, height: int) -> bytes:
    seed = seeds()["jpeg-420"]
    pos = next(p for p, marker, _ in jpeg_segments(seed) if marker in SOF_MARKERS)
    return seed[:pos + 5] + struct.pack(">HH", height, width) + seed[pos + 9 :]


def _huge_tiff(width: int, height: int) -> bytes:
    return tiff_file(tiff_strips(width, height, b"\0" * 64, rows_per_strip=1), b"\0" * 64)


def _huge_vp8l(width: int, height: int) -> bytes:
    return riff_webp((b"VP8L", vp8l_with_size(webp_chunks(seeds()["webp-lossless"])[0][1], width, height)))


def _huge_vp8(width: int, height: int) -> bytes:
    return riff_webp((b"VP8 ", vp8_with_size(webp_chunks(seeds()["webp-lossy"])[0][1], width, height)))


def _huge_animated_webp(width: int, height: int) -> bytes:
    chunks = webp_chunks(seeds()["webp-animated"])
    return riff_webp((b"VP8X", vp8x_payload(chunks[0][1][0], width, height)), *chunks[1:])


HUGE = 2**31 - 1
HUGE_DECLARED = {
    "png": (_huge_png, [(HUGE, HUGE), (HUGE, 1), (1, HUGE), (2**32 - 1, 2**32 - 1), (65536, 65536), (4097, 1)]),
    "jpeg": (_huge_jpeg, [(65535, 65535), (65535, 1), (1, 65535), (4097, 1)]),
    "tiff": (_huge_tiff, [(2**32 - 1, 2**32 - 1), (HUGE, HUGE), (HUGE, 1), (1, HUGE), (4097, 1)]),
    "webp-vp8l": (_huge_vp8l, [(16384, 16384), (16384, 10000), (16384, 1), (1, 16384), (4097, 1)]),
    "webp-vp8": (_huge_vp8, [(16383, 16383), (16383, 10000), (16383, 1), (1, 16383)]),
    "webp-vp8x": (_huge_animated_webp, [(1 << 24, 1 << 24), (1 << 24, 16), (16, 1 << 24), (12000, 12000)]),
}


@pytest.mark.parametrize(
    ("builder", "width", "height"),
    [pytest.param(builder, w, h, id=f"{fmt}-{w}x{h}") for fmt, (builder, sizes) in HUGE_DECLARED.items() for w, h in sizes],
)
def test_huge_declared_dimensions_are_too_large(builder, width, height):
    check_too_large(builder(width, height))


# ---------------------------------------------------------------------------------------------
# Memory: worst cases in a child process under RLIMIT_AS
# ---------------------------------------------------------------------------------------------

CHILD_MAX_PIXELS = 1_000_000
CHILD_HEADROOM = 256 << 20

_CHILD = textwrap.dedent(
    """
    import json, os, resource, sys, time, tracemalloc, warnings
    sys.path.insert(0, os.getcwd())
    warnings.simplefilter("ignore")
    from workers.errors import PermanentImageError
    from workers.io.imageio import DecodeLimits, decode_image

    folder, max_pixels, headroom = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    limits = DecodeLimits(max_bytes=64 << 20, max_pixels=max_pixels)
    names = sorted(os.listdir(folder))
    cases = [(n, open(os.path.join(folder, n), "rb").read()) for n in names]

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) << 10
        return 0

    def run(data):
        try:
            rgb = decode_image(data, "case", limits)
            return "ok", f"{rgb.shape}"
        except PermanentImageError as exc:
            return type(exc).__name__, str(exc)[:300]
        except BaseException as exc:
            return "ESCAPED " + type(exc).__name__, str(exc)[:300]

    warmups = [data for name, data in cases if name.startswith("_warmup-")]
    cases = [(name, data) for name, data in cases if not name.startswith("_warmup-")]
    for data in warmups:  # plugins, codecs and allocator arenas are set up before the limit
        run(data)
    tracemalloc.start()
    tracemalloc.stop()
    limit = status("VmSize") + headroom
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    for name, data in cases:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM: the peak below is this case's
            rss_before, can_peak = status("VmRSS"), True
        except OSError:
            rss_before, can_peak = 0, False
        tracemalloc.start()
        start = time.perf_counter()
        outcome, detail = run(data)
        seconds = time.perf_counter() - start
        traced = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        rss_peak = status("VmHWM") - rss_before if can_peak else -1
        print(json.dumps({"case": name, "outcome": outcome, "detail": detail, "seconds": round(seconds, 3),
                          "traced_peak": traced, "rss_peak": rss_peak}), flush=True)
    print(json.dumps({"done": True, "limit": limit}), flush=True)
    """
)

_ANY = {"ok", "InvalidImageError", "ImageTooLargeError"}
_BAD = {"InvalidImageError", "ImageTooLargeError"}
_TOO_LARGE = {"ImageTooLargeError"}


@cache
def _deflate_bomb(size: int) -> bytes:
    """A zlib stream of ``size`` zero bytes (a multiple of 1 MiB), about 1000:1.

    One fully flushed 1 MiB block, repeated: no need to compress ``size`` bytes to build it.
    """
    raw = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = raw.compress(b"\0" * (1 << 20)) + raw.flush(zlib.Z_FULL_FLUSH)
    final = zlib.compressobj(9, zlib.DEFLATED, -15).flush()
    adler32 = ((size % 65521) << 16) | 1  # of all-zero data
    return b"\x78\xda" + block * (size >> 20) + final + struct.pack(">I", adler32)


def _ztxt_bombs() -> bytes:
    """A PNG with 70 zTXt chunks of 1 MB each once inflated: Pillow stops at 64 MB of text in total."""
    text = zlib.compress(b"a" * ((1 << 20) - 1))
    bombs = [png_chunk(b"zTXt", b"k%d\0\0" % i + text) for i in range(70)]
    return png_file(png_ihdr(8, 8), *bombs, png_chunk(b"IDAT", zlib.compress(b"\0" * 200)), png_chunk(b"IEND", b""))


_SIDE = 1000  # _SIDE**2 == CHILD_MAX_PIXELS
_GREY16 = np.full((_SIDE, _SIDE), 40000, np.uint16)
MEMORY_CASES: dict[str, tuple[Callable[[], bytes], set[str]]] = {
    "png-ihdr-2^31-1-square-with-1GB-idat": (
        lambda: png_file(png_ihdr(HUGE, HUGE), png_chunk(b"IDAT", _deflate_bomb(1 << 30)), png_chunk(b"IEND", b"")),
        _TOO_LARGE),
    "png-ihdr-1x2^31-1": (lambda: _huge_png(1, HUGE), _TOO_LARGE),
    "png-ihdr-65535-square": (lambda: _huge_png(65535, 65535), _TOO_LARGE),
    "png-at-limit-16bit-rgba-with-1GB-idat": (
        lambda: png_file(png_ihdr(_SIDE, _SIDE, 16, 6), png_chunk(b"IDAT", _deflate_bomb(1 << 30)),
                         png_chunk(b"IEND", b"")),
        _ANY),
    "png-at-limit-16bit-grey": (lambda: encode(Image.fromarray(_GREY16), "PNG", compress_level=1), {"ok"}),
    "png-at-limit-interlaced-64MB-idat": (
        lambda: png_file(png_ihdr(_SIDE, _SIDE, 8, 2, interlace=1), png_chunk(b"IDAT", _deflate_bomb(64 << 20)),
                         png_chunk(b"IEND", b"")),
        _ANY),
    "png-70-ztxt-1MB-bombs": (_ztxt_bombs, _ANY),
    "png-icc-64MB-bomb": (
        lambda: png_file(png_ihdr(8, 8), png_chunk(b"iCCP", b"p\0\0" + _deflate_bomb(64 << 20)),
                         png_chunk(b"IDAT", zlib.compress(b"\0" * 200)), png_chunk(b"IEND", b"")),
        _ANY),
    "jpeg-sof-65535-square": (lambda: _huge_jpeg(65535, 65535), _TOO_LARGE),
    "jpeg-sof-65535x15-no-data": (lambda: _huge_jpeg(65535, 15), _BAD),
    "jpeg-progressive-at-limit": (lambda: encode(_strip_image(_SIDE, _SIDE), "JPEG", progressive=True), {"ok"}),
    "tiff-2^32-1-square": (lambda: _huge_tiff(2**32 - 1, 2**32 - 1), _TOO_LARGE),
    "tiff-huge-tiles": (lambda: _tiff_tiled(2**31 - 16, 2**31 - 16), _BAD),
    "tiff-huge-rows-per-strip-and-byte-counts": (
        lambda: tiff_file([*tiff_strips(_SIDE, _SIDE, b"\0" * 64, rows_per_strip=2**32 - 1)[:-1],
                           tiff_entry(279, 4, 2**32 - 1)], b"\0" * 64),
        _BAD),
    "tiff-deflate-strip-1GB-bomb": (
        lambda: tiff_file(tiff_strips(_SIDE, _SIDE, _deflate_bomb(1 << 30), compression=8), _deflate_bomb(1 << 30)),
        _ANY),
    "tiff-at-limit-16bit-grey": (lambda: encode(Image.fromarray(_GREY16), "TIFF"), {"ok"}),
    "webp-vp8x-2^24-square": (lambda: _huge_animated_webp(1 << 24, 1 << 24), _TOO_LARGE),
    "webp-at-limit": (lambda: encode(_strip_image(_SIDE, _SIDE), "WEBP", quality=50, method=0), {"ok"}),
}


# WebP cases that trip BUG_WEBP_CANVAS: the canvas is allocated before the limit is checked. (Canvases over
# 2 x Image.MAX_IMAGE_PIXELS, e.g. 16384x16384, are refused by Pillow itself before allocating.)
_WEBP_CANVAS_CASES = {
    "webp-vp8l-16384x10000": lambda: _huge_vp8l(16384, 10000),
    "webp-vp8-16383x10000": lambda: _huge_vp8(16383, 10000),
    "webp-animated-canvas-12000-square": lambda: _huge_animated_webp(12000, 12000),
}


@pytest.fixture(scope="module")
def memory_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    if not Path("/proc/self/status").exists():
        pytest.skip("needs Linux /proc for address-space measurements")
    folder = tmp_path_factory.mktemp("worst-cases")
    for name, (build, _) in MEMORY_CASES.items():
        (folder / name).write_bytes(build())
    for name, build in _WEBP_CANVAS_CASES.items():
        (folder / name).write_bytes(build())
    for name, data in seeds().items():
        (folder / f"_warmup-{name}").write_bytes(data)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(folder), str(CHILD_MAX_PIXELS), str(CHILD_HEADROOM)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and lines and lines[-1].get("done"), (
        f"worst-case child exited with {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return {line["case"]: line for line in lines[:-1]}


def _check_memory_case(result: dict, expected: set[str]) -> None:
    assert result["outcome"] in expected, result
    # Python-visible allocations (numpy buffers, Pillow's Python side) and resident memory (C included). With
    # max_pixels = 1e6 the RGB result is 3 MB and every case stays under 25 MB, except the zTXt bombs: Pillow
    # keeps up to 64 MB of PNG text (PngImagePlugin.MAX_TEXT_MEMORY) -- a fixed cap, ~66 MB measured.
    assert result["traced_peak"] <= 80 << 20, result
    assert result["rss_peak"] <= 96 << 20, result
    assert result["seconds"] < 5, result


@pytest.mark.parametrize("case", sorted(MEMORY_CASES))
def test_worst_cases_stay_within_memory_limits(memory_results, case):
    _check_memory_case(memory_results[case], MEMORY_CASES[case][1])


@pytest.mark.parametrize("case", sorted(_WEBP_CANVAS_CASES))
def test_huge_webp_canvas_is_refused_before_allocating(memory_results, case):
    _check_memory_case(memory_results[case], _TOO_LARGE)


# ---------------------------------------------------------------------------------------------
# CPU: a progressive JPEG with thousands of scans
# ---------------------------------------------------------------------------------------------

_SCAN_CHILD = textwrap.dedent(
    """
    import os, sys, time, warnings
    sys.path.insert(0, os.getcwd())
    warnings.simplefilter("ignore")
    from workers.errors import PermanentImageError
    from workers.io.imageio import DecodeLimits, decode_image
    data = open(sys.argv[1], "rb").read()
    start = time.perf_counter()
    try:
        decode_image(data, "scans.jpg", DecodeLimits(max_bytes=50 << 20, max_pixels=16_000_000))
        outcome = "ok"
    except PermanentImageError as exc:
        outcome = type(exc).__name__
    print(outcome, round(time.perf_counter() - start, 3))
    """
)


def many_scan_jpeg(side: int, scans: int) -> bytes:
    """A real progressive JPEG, then ``scans`` more copies of its last scan header, each with one byte of data."""
    jpeg = encode(Image.fromarray(np.zeros((side, side, 3), np.uint8)), "JPEG", progressive=True)
    sos = jpeg.rfind(b"\xff\xda")
    (length,) = struct.unpack(">H", jpeg[sos + 2 : sos + 4])
    return jpeg[:-2] + (jpeg[sos : sos + 2 + length] + b"\0") * scans + b"\xff\xd9"


def test_jpeg_with_thousands_of_scans_is_dealt_with_quickly(tmp_path):
    """220 kB, 4 megapixels, 20000 scans: ~0.8 ms per scan today, so ~15 s. At the default limits (16 MP,
    50 MB) one file can hold 4.5 million scans of ~5 ms each: hours of CPU per file."""
    path = tmp_path / "scans.jpg"
    path.write_bytes(many_scan_jpeg(2000, 20_000))
    try:
        proc = subprocess.run([sys.executable, "-c", _SCAN_CHILD, str(path)], cwd=REPO, capture_output=True,
                              text=True, timeout=3)
    except subprocess.TimeoutExpired:
        pytest.fail("decoding a 220 kB JPEG with 20000 scans took more than 3 s")
    assert proc.returncode == 0, proc.stderr[-2000:]
    outcome, seconds = proc.stdout.split()
    assert outcome in _ANY and float(seconds) < 1.0, proc.stdout


def test_jpeg_with_a_normal_number_of_scans_still_decodes():
    """Guard for the scan-limit fix: Pillow writes 10 scans, mozjpeg/jpegtran up to ~20; 40 must still decode."""
    rgb = decode_image(many_scan_jpeg(64, 30), "scans.jpg", LIMITS)
    assert rgb.shape == (64, 64, 3)


# ---------------------------------------------------------------------------------------------
# Python-visible memory of in-process hostile inputs (tracemalloc)
# ---------------------------------------------------------------------------------------------

_SMALL_PNG = encode(Image.fromarray(np.zeros((8, 8, 3), np.uint8)), "PNG")
_SMALL_JPEG = encode(Image.fromarray(np.zeros((8, 8, 3), np.uint8)), "JPEG")
_KB = 1024


def _bloated(kind: str, size: int) -> bytes:
    """``size`` bytes of metadata that Pillow walks in Python, around a valid 8x8 image."""
    jpeg, png = _SMALL_JPEG, _SMALL_PNG
    return {
        "jpeg-empty-app1-segments": lambda: jpeg[:2] + b"\xff\xe1\x00\x02" * (size // 4) + jpeg[2:],
        "jpeg-empty-com-segments": lambda: jpeg[:2] + b"\xff\xfe\x00\x02" * (size // 4) + jpeg[2:],
        "jpeg-fill-bytes": lambda: jpeg[:2] + b"\xff" * size + jpeg[2:],
        "png-private-chunks-before-idat": lambda: png[:33] + png_chunk(b"prVt", b"") * (size // 12) + png[33:],
        "png-private-chunks-after-idat": lambda: png[:-12] + png_chunk(b"prVt", b"") * (size // 12) + png[-12:],
        "tiff-xresolution-rationals": lambda: _tiff_minimal(tiff_entry(282, 5, *[1, 3] * (size // 8))),
        "tiff-bitspersample-shorts": lambda: _tiff_minimal(tiff_entry(258, 3, *[8] * (size // 2))),
    }[kind]()


_METADATA_LIMITS = DecodeLimits(max_bytes=50 << 20, max_pixels=MAX_PIXELS)


@pytest.mark.parametrize(
    ("kind", "size"),
    [("jpeg-empty-app1-segments", 128), ("jpeg-empty-com-segments", 128), ("png-private-chunks-before-idat", 256),
     ("png-private-chunks-after-idat", 256), ("tiff-xresolution-rationals", 128), ("tiff-bitspersample-shorts", 1024)],
)
def test_metadata_memory_is_bounded_by_the_file_size(kind, size):
    """``size`` kB of empty metadata must not cost more than 2x its size (+ 1 MB) in Python memory."""
    data = _bloated(kind, size * _KB)
    tracemalloc.start()
    try:
        check_decode(data, "metadata.img", _METADATA_LIMITS)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= 2 * len(data) + 1024 * _KB, f"{peak / _KB:.0f} kB for a {len(data) / _KB:.0f} kB file"


def test_jpeg_padding_cpu_is_bounded():
    """512 kB of 0xFF fill bytes, which Pillow skips one read(1) at a time: ~0.4 s today, must be < 0.1 s."""
    data = _bloated("jpeg-fill-bytes", 512 * _KB)
    start = time.process_time()
    check_decode(data, "metadata.img", _METADATA_LIMITS)
    assert time.process_time() - start < 0.1


@fuzz(scale=0.5)
@given(
    builder=st.sampled_from([_huge_png, _huge_jpeg, _huge_tiff, _huge_vp8l]),
    width=st.integers(1, 65535), height=st.integers(1, 65535),
)
def test_declared_size_does_not_drive_python_allocations(builder, width, height):
    """Whatever the header declares, Python-side allocations stay small (tracemalloc; C side: see the child)."""
    if builder is _huge_vp8l:
        width, height = (width - 1) % 16384 + 1, (height - 1) % 16384 + 1
    data = builder(width, height)
    tracemalloc.start()
    try:
        check_decode(data, "declared.img")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= 2 * len(data) + 40 * MAX_PIXELS + (1 << 20), peak

