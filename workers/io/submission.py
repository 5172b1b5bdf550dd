"""The competition's ``submission.csv``: one row per output image, streamed.

Format (see DESIGN.md): header ``ID,pixel_0,...,pixel_{N-1}``; each row is the image ID (file stem
with its split prefix ``test_``/``val_`` replaced by ``gt_``) and every 8th value of the row-major
Pillow ``convert("L")`` of the 4x output, as integers 0-255.
"""

from __future__ import annotations

import csv
import io
from pathlib import PurePosixPath
from typing import IO

import numpy as np
from PIL import Image

from workers.errors import ConfigError, SubmissionMismatchError

SUBSAMPLE_STEP = 8
_SPLIT_PREFIXES = ("test_", "val_")
_HEADER_PROBE_BYTES = 1 << 16


def submission_id(name: str) -> str:
    """``test_00001.png`` -> ``gt_00001``; other stems are kept as they are."""
    stem = PurePosixPath(name).stem
    for prefix in _SPLIT_PREFIXES:
        if stem.startswith(prefix):
            return "gt_" + stem[len(prefix) :]
    return stem


def grey(rgb: np.ndarray) -> np.ndarray:
    """Pillow's ``convert("L")`` (ITU-R 601-2 luma), the competition's greyscale."""
    return np.asarray(Image.fromarray(rgb).convert("L"))


def grey_subsample(rgb: np.ndarray, step: int = SUBSAMPLE_STEP) -> np.ndarray:
    """Every ``step``-th value of the flattened Pillow luma (ITU-R 601-2) of an RGB image."""
    return grey(rgb).ravel()[::step]


def format_row(image_id: str, values: np.ndarray) -> str:
    """One CSV line (with newline), quoted by the csv module's rules if the ID needs it."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow([image_id, *values.tolist()])
    return buffer.getvalue()


def header(n_columns: int) -> str:
    return "ID," + ",".join(f"pixel_{i}" for i in range(n_columns)) + "\n"


def read_expected_columns(stream: IO[bytes]) -> int:
    """Number of pixel columns in a ``sample_submission.csv``, reading only its header line.

    Raises:
        ConfigError: the header is not ``ID,pixel_0,...``.
    """
    head = b""
    while b"\n" not in head:
        block = stream.read(_HEADER_PROBE_BYTES)
        if not block:
            break
        head += block
    first = head.split(b"\n", 1)[0].decode("utf-8-sig").strip()
    columns = first.split(",")
    if len(columns) < 2 or columns[0] != "ID" or columns[1] != "pixel_0":
        raise ConfigError(f"sample submission header must start with 'ID,pixel_0', got {first[:40]!r}")
    return len(columns) - 1


def parse_row(line: str) -> tuple[str, list[str]]:
    """(ID, pixel values as text) of one stored row line, read by the rules :func:`format_row` wrote it with."""
    image_id, *values = next(csv.reader([line]))
    return image_id, values


def row_width(line: str) -> int:
    """Number of pixel values in one stored row line."""
    return len(parse_row(line)[1])


class SubmissionWriter:
    """Writes the header, then rows one at a time, checking each row's width.

    ``n_columns`` comes from ``sample_submission.csv`` when there is one; otherwise the first row
    fixes it. Memory stays flat: nothing but the current row is held.
    """

    def __init__(self, out: IO[str], n_columns: int | None) -> None:
        self._out = out
        self.n_columns = n_columns
        self._header_written = False
        self.rows = 0

    def add(self, name: str, line: str) -> None:
        """Append ``line`` (the stored row of ``name``).

        Raises:
            SubmissionMismatchError: the row's width differs from the submission's.
        """
        width = row_width(line)
        if self.n_columns is None:
            self.n_columns = width
        if width != self.n_columns:
            raise SubmissionMismatchError(
                name,
                f"row has {width} values but the submission has {self.n_columns} columns "
                "(output size differs from the competition's)",
            )
        self._write_header()
        self._out.write(line if line.endswith("\n") else line + "\n")
        self.rows += 1

    def close(self) -> None:
        """Make sure a header exists even when no row was written, if the width is known (from the
        sample submission); with neither, the file stays empty: no header can be right."""
        if self.n_columns is not None:
            self._write_header()

    def _write_header(self) -> None:
        if not self._header_written:
            self._out.write(header(self.n_columns or 0))
            self._header_written = True
