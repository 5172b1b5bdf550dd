import io
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from tests.helpers.images import noisy_image
from tests.helpers.paths import DATASET
from workers.errors import ConfigError, SubmissionMismatchError
from workers.io.submission import (
    SubmissionWriter,
    format_row,
    grey_subsample,
    header,
    read_expected_columns,
    read_sample_submission,
    row_width,
    submission_id,
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("test_00001.png", "gt_00001"), ("val_00042.jpg", "gt_00042"), ("gt_00003.png", "gt_00003"), ("photo.jpeg", "photo")],
)
def test_submission_id(name, expected):
    assert submission_id(name) == expected


def test_grey_subsample_is_every_8th_pillow_luma_value():
    rgb = noisy_image(16, 4)
    expected = np.asarray(Image.fromarray(rgb).convert("L")).flatten()[::8]
    assert np.array_equal(grey_subsample(rgb), expected)
    assert grey_subsample(noisy_image(256, 160)).size == 5120


def test_row_format_and_width():
    line = format_row("gt_00001", np.array([0, 17, 255], np.uint8))
    assert line == "gt_00001,0,17,255\n" and row_width(line) == 3


def test_ids_with_commas_are_quoted():
    line = format_row("a,b", np.array([1], np.uint8))
    assert line == '"a,b",1\n' and row_width(line) == 1


def test_header():
    assert header(3) == "ID,pixel_0,pixel_1,pixel_2\n"


def test_expected_columns_from_the_sample_dataset():
    with open(DATASET / "sample_submission.csv", "rb") as f:
        assert read_expected_columns(f) == 256 * 160 // 8


def test_expected_columns_rejects_a_bad_header():
    with pytest.raises(ConfigError, match="ID,pixel_0"):
        read_expected_columns(io.BytesIO(b"name,value\nx,1\n"))


def test_the_sample_submission_gives_its_columns_and_every_id_in_order():
    with open(DATASET / "sample_submission.csv", "rb") as f:
        sample = read_sample_submission(f)
    assert sample.columns == 256 * 160 // 8
    assert sample.ids == tuple(submission_id(p.name) for p in sorted((DATASET / "test").iterdir()))
    quoted = read_sample_submission(io.BytesIO(b'ID,pixel_0\r\n"a,b",1\r\ngt_2,3\r\n\r\n'))
    assert quoted.ids == ("a,b", "gt_2")


def test_writer_checks_widths_and_keeps_going():
    out = io.StringIO()
    writer = SubmissionWriter(out, n_columns=2)
    writer.add("a.png", "gt_a,1,2\n")
    with pytest.raises(SubmissionMismatchError, match="3 values.*2 columns"):
        writer.add("b.png", "gt_b,1,2,3\n")
    writer.add("c.png", "gt_c,3,4")
    writer.close()
    assert out.getvalue() == "ID,pixel_0,pixel_1\ngt_a,1,2\ngt_c,3,4\n"


def test_first_row_fixes_the_width_without_a_sample():
    out = io.StringIO()
    writer = SubmissionWriter(out, n_columns=None)
    writer.add("a", "gt_a,1,2,3\n")
    assert writer.n_columns == 3


def test_writer_memory_is_flat_in_the_number_of_rows():
    """Streaming: peak memory for 2,000 rows is about that of a few rows, not of all of them."""
    line = format_row("gt_x", np.zeros(5120, np.uint8))

    def peak(rows: int) -> int:
        sink = _CountingSink()
        tracemalloc.start()
        writer = SubmissionWriter(sink, n_columns=5120)
        for i in range(rows):
            writer.add(f"{i}.png", line)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    assert peak(2000) < 2 * peak(20) + 200_000


class _CountingSink:
    def __init__(self) -> None:
        self.size = 0

    def write(self, text: str) -> int:
        self.size += len(text)
        return len(text)
