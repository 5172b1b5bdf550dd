"""Object keys of a run: names every backend can hold, for any run id."""

from __future__ import annotations

import pytest

from workers.errors import InvalidKeyError
from workers.run.keys import KEY_BYTES, SEGMENT_BYTES, RunKeys, check_fits, check_name, display_name


def test_the_longest_stem_that_fits_leaves_room_for_every_suffix_the_run_adds():
    """``meta/<stem>.upscale.json`` is the longest segment: 242 bytes of stem fit, 243 do not."""
    check_fits("a" * 242 + ".png")
    with pytest.raises(InvalidKeyError, match=r"too long.*'\.(upscale|denoise)\.json'.*256-byte.*allow 255"):
        check_fits("a" * 243 + ".png")
    assert max(len(seg.encode()) for key in RunKeys("r" * 128).outputs("a" * 242 + ".png")
               for seg in key.split("/")) == SEGMENT_BYTES


def test_name_length_counts_bytes_not_characters():
    check_fits("é" * 121 + ".png")  # 242 bytes
    with pytest.raises(InvalidKeyError, match="too long"):
        check_fits("é" * 122 + ".png")  # 244 bytes, 126 characters


def test_a_long_store_prefix_counts_towards_the_s3_key_limit():
    name = "a" * 200 + ".png"
    check_fits(name, "p" * 600)
    with pytest.raises(InvalidKeyError, match=f"S3 allows {KEY_BYTES}"):
        check_fits(name, "p" * 700)


def test_a_name_that_is_not_utf8_is_refused_and_shown_with_its_bytes_escaped():
    name = b"test_\xff\xfe.png".decode("utf-8", "surrogateescape")  # what a local listing yields
    with pytest.raises(InvalidKeyError, match=r"not valid UTF-8") as info:
        check_name(name)
    assert "\\xff\\xfe" in str(info.value)
    assert display_name(name) == "test_\\xff\\xfe.png"
    assert display_name("test_é.png") == "test_é.png"
