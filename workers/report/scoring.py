"""Scoring a run's outputs against ground truth, as the competition scores them.

PSNR is the competition's (on the stored submission vector, every 8th greyscale value of the 4x
output); SSIM is that of the full-resolution greyscale images, as in ``producer evaluate``.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from workers.errors import ConfigError, ObjectNotFoundError, PermanentImageError
from workers.io.imageio import DecodeLimits, decode_image, decode_png
from workers.io.storage import Storage
from workers.io.submission import grey_subsample, submission_id
from workers.ops.metrics import competition_scores
from workers.report.data import Score
from workers.run.keys import RunKeys


def truth_by_name(names: Iterable[str], folder: Path) -> dict[str, Path]:
    """Ground truth for ``names`` from ``folder``, matched by submission ID (``val_1.png`` -> ``gt_1.*``),
    as ``producer evaluate`` matches them; names without one are left out.

    Raises:
        ConfigError: ``folder`` is not a directory.
    """
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a directory")
    by_id = {p.stem: p for p in folder.iterdir() if p.is_file()}
    return {name: by_id[submission_id(name)] for name in names if submission_id(name) in by_id}


def score_image(storage: Storage, keys: RunKeys, name: str, truth_path: Path, limits: DecodeLimits) -> Score:
    """Competition PSNR of the stored row and SSIM of the 4x image against ``truth_path``; ``limits``
    bound both images (the 4x size: the input limits, :meth:`~DecodeLimits.scaled`).

    Raises:
        ImageTooLargeError: the stored output exceeds ``limits``.
        OSError: the ground truth could not be read.
    """
    output, row = get_png(storage, keys.sr(name), limits), _get_row(storage, keys.row(name))
    if output is None or row is None:
        return Score(name, None, None, "no output to score")
    try:
        truth = decode_image(truth_path.read_bytes(), truth_path.name, limits)
    except PermanentImageError as exc:
        return Score(name, None, None, f"ground truth unreadable: {exc.reason}")
    if output.shape != truth.shape or row.shape != grey_subsample(truth).shape:
        return Score(name, None, None, f"output {_size(output)} differs from ground truth {_size(truth)}: not scored")
    return Score(name, *competition_scores(output, truth, row))


def _get_row(storage: Storage, key: str) -> np.ndarray | None:
    try:
        line = storage.get(key).decode()
    except ObjectNotFoundError:
        return None
    return np.array(next(csv.reader([line]))[1:], dtype=np.int64)


def get_png(storage: Storage, key: str, limits: DecodeLimits) -> np.ndarray | None:
    """A PNG the pipeline stored, or None when there is none.

    Raises:
        ImageTooLargeError: it exceeds ``limits``.
    """
    try:
        return decode_png(storage.get(key), limits, key)
    except ObjectNotFoundError:
        return None


def _size(rgb: np.ndarray) -> str:
    return f"{rgb.shape[1]}x{rgb.shape[0]}"
