"""Scoring a run's outputs against ground truth, as the competition scores them, next to the
baseline every user knows: bicubic x4 of the same input.

PSNR is the competition's (on the stored submission vector, every 8th greyscale value of the 4x
output); SSIM is that of the full-resolution greyscale images, as in ``producer evaluate``.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from workers.errors import ConfigError, ObjectNotFoundError, PermanentImageError
from workers.io.imageio import DecodeLimits, decode_image, decode_png
from workers.io.storage import Storage
from workers.io.submission import grey_subsample, submission_id
from workers.ops.metrics import competition_scores
from workers.ops.resample import bicubic_x4
from workers.report.data import Score, ScoreMeans
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


def score_image(
    storage: Storage,
    keys: RunKeys,
    name: str,
    truth_path: Path,
    limits: DecodeLimits,
    source: Storage | None = None,
    input_limits: DecodeLimits | None = None,
) -> Score:
    """Competition PSNR of the stored row and SSIM of the 4x image against ``truth_path``; ``limits``
    bound both images (the 4x size: the input limits, :meth:`~DecodeLimits.scaled`). With ``source``,
    bicubic x4 of the input (decoded under ``input_limits``) is scored against the same truth.

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
    psnr, ssim = competition_scores(output, truth, row)
    if source is None:
        return Score(name, psnr, ssim)
    original, why = load_input(source, name, input_limits or DecodeLimits.from_settings())
    if original is None:
        return Score(name, psnr, ssim, f"no bicubic baseline: input {why}")
    baseline = bicubic_x4(original)
    if baseline.shape != truth.shape:
        return Score(
            name, psnr, ssim, f"no bicubic baseline: bicubic x4 is {_size(baseline)}, the ground truth {_size(truth)}"
        )
    return Score(name, psnr, ssim, "", *competition_scores(baseline, truth))


def mean_scores(scores: Sequence[Score]) -> ScoreMeans | None:
    """The means of the scored images (None when none is), the baseline's over those it scored too."""
    ours = [(s.psnr, s.ssim) for s in scores if s.psnr is not None and s.ssim is not None]
    if not ours:
        return None
    baseline = [
        (s.baseline_psnr, s.baseline_ssim, s.gain)
        for s in scores
        if s.psnr is not None and s.baseline_psnr is not None and s.baseline_ssim is not None
    ]
    gains = [gain for _, _, gain in baseline if gain is not None and not math.isnan(gain)]
    return ScoreMeans(
        count=len(ours),
        psnr=statistics.fmean(p for p, _ in ours),
        ssim=statistics.fmean(q for _, q in ours),
        baseline_count=len(baseline),
        baseline_psnr=statistics.fmean(p for p, _, _ in baseline) if baseline else None,
        baseline_ssim=statistics.fmean(q for _, q, _ in baseline) if baseline else None,
        gain=statistics.fmean(gains) if gains else None,
    )


def load_input(source: Storage, name: str, limits: DecodeLimits) -> tuple[np.ndarray | None, str]:
    """The decoded input, or None and why not (inputs are untrusted: same limits as the pipeline).

    Raises:
        TransientError: the source could not be reached.
    """
    try:
        return decode_image(source.get(name), name, limits), ""
    except ObjectNotFoundError:
        return None, "missing from the source"
    except PermanentImageError as exc:
        return None, exc.reason


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
