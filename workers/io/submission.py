"""The competition's ``submission.csv``: one row per output image, streamed.

Format (see DESIGN.md): header ``ID,pixel_0,...,pixel_{N-1}``; each row is the image ID (file stem
with its split prefix ``test_``/``val_`` replaced by ``gt_``) and every 8th value of the row-major
Pillow ``convert("L")`` of the 4x output, as integers 0-255.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import IO

import numpy as np
from PIL import Image

from workers.errors import ConfigError, SubmissionMismatchError

SUBSAMPLE_STEP = 8
_SPLIT_PREFIXES = ("test_", "val_")
_HEADER_PROBE_BYTES = 1 << 16
# Large images are converted and formatted this much at a time: Pillow's own copy of an RGB image
# takes 4 bytes a pixel and a Python list of the values 8 bytes each, never for the whole image.
_BAND_PIXELS = 1 << 20
_ROW_CHUNK = 1 << 18
_DIGITS = tuple(str(value) for value in range(256))  # the values as text, made once: no str per value


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
    """Every ``step``-th value of the flattened Pillow luma (ITU-R 601-2) of an RGB image, converted
    a band of rows at a time: the luma of the whole image never exists at once."""
    height, width = rgb.shape[:2]
    rows = max(1, _BAND_PIXELS // width)
    # The band starting at row ``top`` begins at flat index top * width: its first kept value is the
    # one that brings that index to a multiple of ``step``. (Copied: a view would keep the band alive.)
    parts = [grey(rgb[top : top + rows]).ravel()[-top * width % step :: step].copy()
             for top in range(0, height, rows)]
    return np.concatenate(parts) if parts else np.empty(0, np.uint8)


def format_row(image_id: str, values: np.ndarray) -> str:
    """One CSV line (with newline), quoted by the csv module's rules if the ID needs it."""
    buffer = io.BytesIO()
    write_row(buffer, image_id, values)
    return buffer.getvalue().decode()


def write_row(out: IO[bytes], image_id: str, values: np.ndarray) -> None:
    """:func:`format_row`'s line, UTF-8, written to ``out`` a chunk of values at a time (a 16 MP
    input's row has 32 million): the whole line never exists as one string.

    Raises:
        ValueError: ``values`` are not uint8 grey levels.
    """
    if values.dtype != np.uint8:
        raise ValueError(f"submission values must be uint8 grey levels, got {values.dtype}")
    head = io.StringIO()
    csv.writer(head, lineterminator="").writerow([image_id, *values[:_ROW_CHUNK].tolist()])
    out.write(head.getvalue().encode())
    for start in range(_ROW_CHUNK, len(values), _ROW_CHUNK):
        out.write(("," + ",".join(map(_DIGITS.__getitem__, values[start : start + _ROW_CHUNK].tolist()))).encode())
    out.write(b"\n")


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


@dataclass(frozen=True)
class SampleSubmission:
    """What a competition's ``sample_submission.csv`` fixes: the column count and the IDs, in order."""

    columns: int
    ids: tuple[str, ...]


def read_sample_submission(stream: IO[bytes]) -> SampleSubmission:
    """The column count (:func:`read_expected_columns`) and every row's ID, streamed a line at a
    time (a row of the competition's is about 300 KB of values, never kept).

    Raises:
        ConfigError: the header is not ``ID,pixel_0,...``.
    """
    columns = read_expected_columns(stream)
    stream.seek(0)
    next(stream, b"")  # the header
    ids = []
    for raw in stream:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            continue
        first = next(csv.reader([line])) if line.startswith('"') else line.split(",", 1)
        ids.append(first[0])
    return SampleSubmission(columns, tuple(ids))


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
