"""Score runs and baselines against ground truth with the competition's metric.

PSNR is computed exactly as the competition does, on the submission vectors (every 8th value of
the greyscale 4x image) and averaged over images; SSIM is the mean SSIM of the full-resolution
greyscale images, reported alongside.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from workers.errors import ConfigError
from workers.io.imageio import DecodeLimits, decode_image, decode_png
from workers.io.storage import Storage
from workers.io.submission import grey_subsample, parse_row, submission_id
from workers.ops.denoise import DenoiseSpec, denoise
from workers.ops.metrics import competition_scores
from workers.ops.resample import bicubic_x4
from workers.ops.tone import apply_tone
from workers.ops.upscalers import upscaler_kind
from workers.run.keys import RunKeys, RunProgress, stem
from workers.run.manifest import RunManifest
from workers.training.calibrate import Calibration

VAL_INPUTS = Path("val/val")
VAL_TRUTH = Path("val/gt")
BASELINE_SCALE = upscaler_kind("bicubic").scale  # the baselines upscale with bicubic_x4


@dataclass(frozen=True)
class ImageScore:
    name: str
    psnr: float
    ssim: float


@dataclass
class MethodScore:
    method: str
    images: list[ImageScore] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # no output, or an output of the wrong size

    @property
    def psnr(self) -> float:
        return float(np.mean([s.psnr for s in self.images])) if self.images else math.nan

    @property
    def ssim(self) -> float:
        return float(np.mean([s.ssim for s in self.images])) if self.images else math.nan


def truth_pairs(inputs: Path, truth: Path) -> list[tuple[Path, Path]]:
    """Match ``inputs/val_00001.png`` to ``truth/gt_00001.png`` by submission ID.

    Raises:
        ConfigError: a folder is missing or no input has a ground truth.
    """
    for folder in (inputs, truth):
        if not folder.is_dir():
            raise ConfigError(f"{folder} is not a directory")
    by_id = {p.stem: p for p in truth.iterdir() if p.is_file()}
    pairs = [(p, by_id[submission_id(p.name)]) for p in sorted(inputs.iterdir()) if submission_id(p.name) in by_id]
    if not pairs:
        raise ConfigError(f"no file in {inputs} has a ground truth in {truth} (expected val_X.png -> gt_X.png)")
    return pairs


def load_rgb(path: Path, limits: DecodeLimits | None = None) -> np.ndarray:
    """A local image decoded as the pipeline decodes its inputs (16-bit scaled), under ``limits``
    (default: the default input limits; a ground truth takes them :meth:`~DecodeLimits.scaled`).

    Raises:
        PermanentImageError: undecodable or above the limits.
        OSError: the file could not be read.
    """
    return decode_image(path.read_bytes(), path.name, limits or DecodeLimits.from_settings())


def score(name: str, output: np.ndarray, truth: np.ndarray, row: np.ndarray | None = None) -> ImageScore:
    """Score one 4x output; ``row`` is the stored submission vector when there is one."""
    return ImageScore(name, *competition_scores(output, truth, row))


def score_function(method: str, pairs: Iterable[tuple[Path, Path]], make: Callable[[np.ndarray], np.ndarray],
                   limits: DecodeLimits | None = None) -> MethodScore:
    """Score a baseline: ``make`` maps the low-resolution input to its 4x output; inputs are decoded
    under ``limits`` (default: the default input limits), ground truths under them scaled by 4."""
    limits = limits or DecodeLimits.from_settings()
    result = MethodScore(method)
    for inp, gt in pairs:
        output, truth = make(load_rgb(inp, limits)), load_rgb(gt, limits.scaled(BASELINE_SCALE))
        if output.shape != truth.shape:
            result.missing.append(inp.name)
            continue
        result.images.append(score(inp.name, output, truth))
    return result


def score_run(storage: Storage, manifest: RunManifest, pairs: Iterable[tuple[Path, Path]], method: str,
              limits: DecodeLimits | None = None) -> MethodScore:
    """Score a finished run's rows and 4x images against ground truth; both are decoded under the
    input ``limits`` (default: the defaults) scaled by the run's upscaler."""
    keys = RunKeys(manifest.run_id)
    done = RunProgress.read(storage, manifest.run_id).done
    output_limits = (limits or DecodeLimits.from_settings()).scaled(upscaler_kind(manifest.pipeline.upscaler).scale)
    result = MethodScore(method)
    for inp, gt in pairs:
        truth = load_rgb(gt, output_limits)
        if stem(inp.name) not in done:
            result.missing.append(inp.name)
            continue
        output = decode_png(storage.get(keys.sr(inp.name)), output_limits, inp.name)
        row = np.array(parse_row(storage.get(keys.row(inp.name)).decode())[1], dtype=np.int64)
        if output.shape != truth.shape or row.shape != grey_subsample(truth).shape:
            result.missing.append(inp.name)
            continue
        result.images.append(score(inp.name, output, truth, row))
    return result


def baselines(pairs: list[tuple[Path, Path]], spec: DenoiseSpec, calibration: Calibration | None = None,
              limits: DecodeLimits | None = None) -> list[MethodScore]:
    """Bicubic, NL-means (the seed's strength) + bicubic, and with a calibration the calibrated
    strength and, where it applies, the tone curve; ``limits`` as :func:`score_function`'s."""
    scores = [
        score_function("bicubic x4", pairs, bicubic_x4, limits),
        score_function(f"NL-means h={spec.h:g} + bicubic x4", pairs, lambda rgb: bicubic_x4(denoise(rgb, spec)), limits),
    ]
    if calibration is not None and calibration.nlm_h not in (spec.h, 0):
        tuned = calibration.denoise_spec(spec)
        scores.append(score_function(f"NL-means h={tuned.h:g} (calibrated) + bicubic x4", pairs,
                                     lambda rgb: bicubic_x4(denoise(rgb, tuned)), limits))
    curve = calibration.curve if calibration else None
    if curve is not None:
        scores.append(score_function("tone + bicubic x4", pairs, lambda rgb: bicubic_x4(apply_tone(rgb, curve)),
                                     limits))
    return scores


def format_table(scores: Iterable[MethodScore]) -> str:
    rows = [("method", "PSNR (dB)", "SSIM", "images")]
    for s in scores:
        counted = f"{len(s.images)}" + (f" ({len(s.missing)} missing)" if s.missing else "")
        rows.append((s.method, f"{s.psnr:.2f}", f"{s.ssim:.4f}", counted))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
