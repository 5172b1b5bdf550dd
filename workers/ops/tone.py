"""Tone calibration: a per-channel monotone intensity curve fitted on training pairs.

Where a dataset's inputs are darker (or brighter) than their targets -- a darkening such as
``0.6 * x**1.3`` before the noise -- tone, not noise or resolution, dominates the error, and this
module learns the inverse mapping from data. Where input and target are equally dark (the real
competition data, mean ratio 1.01), calibration measures that and no tone stage runs
(:attr:`workers.training.forward_fit.ForwardFit.tone_applies`).

* :class:`ToneAccumulator` streams training pairs into 3 x 256 sums and counts: for every input
  level ``v`` of channel ``c``, the target's mean at the pixels where the input equals ``v``. The
  target is first brought to the input's resolution with ``INTER_AREA``, the degradation's own
  downscale. Memory is flat in the number of pairs.
* :meth:`ToneAccumulator.fit` turns those means into a :class:`ToneCurve` by weighted isotonic
  regression (pool adjacent violators) and fills levels no training pixel had.
* :func:`apply_tone` maps an image through the curve; :func:`scaled_nlm_strength` adapts the
  NL-means strength to the noise the curve amplifies.
* :meth:`ToneCurve.to_json` / :meth:`ToneCurve.from_json` are the versioned artifact.

No Celery here: everything is a pure function or a small value object.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import cv2
import numpy as np

from workers.errors import ConfigError
from workers.ops.denoise import DenoiseSpec

ARTIFACT_KIND = "lowlight-sr/tone-curve"
ARTIFACT_VERSION = 1
LEVELS = 256
SCALE = 4
# Fitted values are kept to a thousandth of a level: far below uint8 rounding, and a small artifact.
_LUT_DECIMALS = 3
# Levels averaged by local_gain: the raw slope of a step-like fit is too jumpy to read at one level.
GAIN_WINDOW = 9


@dataclass(frozen=True, eq=False)
class ToneCurve:
    """A fitted per-channel tone curve and where it came from.

    ``lut`` is float, shape (3, 256), channel order RGB, values in [0, 255], non-decreasing along
    each row. It stays float (to a thousandth of a level) so the artifact keeps the fit's precision
    and :func:`local_gain` sees the real slope rather than uint8 steps; :attr:`lut_u8` rounds it
    once for application, where the output is uint8 anyway (rounding keeps it non-decreasing).

    Raises:
        ConfigError: on construction, if ``lut`` is not a finite, non-decreasing 3 x 256 table in
            [0, 255] or the provenance is malformed.
    """

    lut: np.ndarray
    n_pairs: int
    pixels: tuple[int, int, int]
    names_sha256: str
    created_at: str
    version: int = ARTIFACT_VERSION
    _lut_u8: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        lut = _check_lut(self.lut)
        lut.setflags(write=False)
        object.__setattr__(self, "lut", lut)
        u8 = np.rint(lut).astype(np.uint8)
        u8.setflags(write=False)
        object.__setattr__(self, "_lut_u8", u8)
        if self.version != ARTIFACT_VERSION:
            raise ConfigError(f"tone curve: unsupported version {self.version!r} (this code reads {ARTIFACT_VERSION})")
        if not _is_int(self.n_pairs) or self.n_pairs < 0:
            raise ConfigError(f"tone curve: n_pairs must be a non-negative integer, got {self.n_pairs!r}")
        if len(self.pixels) != 3 or not all(_is_int(p) and p >= 0 for p in self.pixels):
            raise ConfigError(f"tone curve: pixels must be 3 non-negative integers, got {self.pixels!r}")
        object.__setattr__(self, "pixels", tuple(int(p) for p in self.pixels))
        if not isinstance(self.names_sha256, str) or not isinstance(self.created_at, str):
            raise ConfigError("tone curve: names_sha256 and created_at must be strings")

    @property
    def lut_u8(self) -> np.ndarray:
        """The (3, 256) uint8 table :func:`apply_tone` uses (read-only)."""
        return self._lut_u8

    def to_json(self) -> bytes:
        """The versioned JSON artifact (about 6 kB); :meth:`from_json` reads it back exactly."""
        document = {
            "kind": ARTIFACT_KIND,
            "version": self.version,
            "lut": self.lut.tolist(),
            "n_pairs": self.n_pairs,
            "pixels": list(self.pixels),
            "names_sha256": self.names_sha256,
            "created_at": self.created_at,
        }
        return json.dumps(document, allow_nan=False, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> ToneCurve:
        """Parse an artifact written by :meth:`to_json`.

        Raises:
            ConfigError: not UTF-8 JSON, not a tone-curve object, an unsupported version, a missing
                field, or a LUT that is not 3 x 256 finite numbers in [0, 255], non-decreasing.
        """
        try:
            document = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"tone curve: not a JSON document ({exc})") from None
        if not isinstance(document, dict) or document.get("kind") != ARTIFACT_KIND:
            found = document.get("kind") if isinstance(document, dict) else type(document).__name__
            raise ConfigError(f"tone curve: kind must be {ARTIFACT_KIND!r}, got {found!r}")
        if document.get("version") != ARTIFACT_VERSION:
            raise ConfigError(
                f"tone curve: unsupported version {document.get('version')!r} (this code reads {ARTIFACT_VERSION})"
            )
        missing = sorted({"lut", "n_pairs", "pixels", "names_sha256", "created_at"} - document.keys())
        if missing:
            raise ConfigError(f"tone curve: missing field(s) {', '.join(missing)}")
        if not isinstance(document["pixels"], list):
            raise ConfigError(f"tone curve: pixels must be a list of 3 integers, got {document['pixels']!r}")
        return cls(
            lut=_lut_from_json(document["lut"]),
            n_pairs=document["n_pairs"],
            pixels=tuple(document["pixels"]),
            names_sha256=document["names_sha256"],
            created_at=document["created_at"],
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _lut_from_json(rows: Any) -> np.ndarray:
    """Refuse anything but 3 lists of 256 JSON numbers before numpy gets to coerce it."""
    if not isinstance(rows, list) or len(rows) != 3 or not all(isinstance(r, list) and len(r) == LEVELS for r in rows):
        shape = [len(r) if isinstance(r, list) else type(r).__name__ for r in rows] if isinstance(rows, list) else rows
        raise ConfigError(f"tone curve: lut must be 3 rows of {LEVELS} numbers, got row lengths {shape!r}")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for row in rows for v in row):
        raise ConfigError("tone curve: lut values must be numbers")
    return np.asarray(rows, dtype=np.float64)


def _check_lut(lut: np.ndarray) -> np.ndarray:
    lut = np.array(lut, dtype=np.float64)  # a private copy: the curve is immutable
    if lut.shape != (3, LEVELS):
        raise ConfigError(f"tone curve: lut must have shape (3, {LEVELS}), got {lut.shape}")
    if not np.isfinite(lut).all():
        raise ConfigError("tone curve: lut contains NaN or infinite values")
    if lut.min() < 0 or lut.max() > 255:
        raise ConfigError(f"tone curve: lut values must lie in [0, 255], got [{lut.min():g}, {lut.max():g}]")
    drops = np.argwhere(np.diff(lut, axis=1) < 0)
    if len(drops):
        c, v = drops[0]
        raise ConfigError(
            f"tone curve: lut must be non-decreasing, channel {'RGB'[c]} drops from "
            f"{lut[c, v]:g} at level {v} to {lut[c, v + 1]:g} at level {v + 1}"
        )
    return lut


def isotonic(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted least-squares non-decreasing fit of ``y`` (pool adjacent violators).

    ``w`` must be positive. Each violation merges two blocks into their weighted mean; a stack of
    blocks makes the whole fit O(n).
    """
    means: list[float] = []
    weights: list[float] = []
    sizes: list[int] = []
    for yi, wi in zip(np.asarray(y, float).tolist(), np.asarray(w, float).tolist(), strict=True):
        means.append(yi)
        weights.append(wi)
        sizes.append(1)
        while len(means) > 1 and means[-2] > means[-1]:
            m, wt, n = means.pop(), weights.pop(), sizes.pop()
            total = weights[-1] + wt
            means[-1] = (means[-1] * weights[-1] + m * wt) / total
            weights[-1] = total
            sizes[-1] += n
    return np.repeat(np.asarray(means, dtype=np.float64), sizes)


class ToneAccumulator:
    """Streams training pairs into per-channel, per-level target sums and counts (3 x 256 each).

    Not thread-safe; use one per fit.
    """

    def __init__(self) -> None:
        self.sums = np.zeros((3, LEVELS), np.float64)
        self.counts = np.zeros((3, LEVELS), np.int64)
        self.n_pairs = 0
        self._names = hashlib.sha256()

    def add_pair(self, inp_rgb: np.ndarray, target_rgb: np.ndarray, name: str = "") -> None:
        """Add one pair: ``inp_rgb`` (H x W x 3 uint8, dark) and ``target_rgb`` (4H x 4W x 3 uint8).

        ``name`` (the input's file name) goes into the provenance hash.

        Raises:
            ConfigError: either array is not H x W x 3 uint8, or the target is not exactly 4x the
                input (the message names ``name``).
        """
        label = name or f"pair {self.n_pairs + 1}"
        for what, array in (("input", inp_rgb), ("target", target_rgb)):
            if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
                raise ConfigError(f"{label}: {what} must be H x W x 3 uint8, got {array.shape} {array.dtype}")
        h, w = inp_rgb.shape[:2]
        if target_rgb.shape[:2] != (SCALE * h, SCALE * w):
            raise ConfigError(
                f"{label}: target is {target_rgb.shape[1]}x{target_rgb.shape[0]}, "
                f"expected exactly {SCALE}x the {w}x{h} input ({SCALE * w}x{SCALE * h})"
            )
        # Float resize: the area mean without a second rounding on top of the input's.
        low = cv2.resize(target_rgb.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
        for c in range(3):
            levels = inp_rgb[..., c].ravel()
            self.sums[c] += np.bincount(levels, weights=low[..., c].ravel(), minlength=LEVELS)
            self.counts[c] += np.bincount(levels, minlength=LEVELS)
        self.n_pairs += 1
        self._names.update(name.encode("utf-8") + b"\n")

    def fit(self) -> ToneCurve:
        """The isotonic curve through the per-level target means.

        Levels with data are fitted by weighted isotonic regression (weights = pixel counts); empty
        levels between them are linearly interpolated, and beyond the lowest/highest populated level
        the curve is flat.

        Raises:
            ConfigError: no pixel was accumulated.
        """
        if not self.counts.any():
            raise ConfigError("tone curve: no training pixels; add at least one pair before fitting")
        levels = np.arange(LEVELS)
        lut = np.empty((3, LEVELS), np.float64)
        for c in range(3):
            seen = self.counts[c] > 0
            fitted = isotonic(self.sums[c, seen] / self.counts[c, seen], self.counts[c, seen])
            lut[c] = np.interp(levels, levels[seen], fitted)  # np.interp is flat outside the data
        totals = self.counts.sum(axis=1)  # pixels seen per channel
        return ToneCurve(
            lut=np.round(np.clip(lut, 0, 255), _LUT_DECIMALS),
            n_pairs=self.n_pairs,
            pixels=(int(totals[0]), int(totals[1]), int(totals[2])),
            names_sha256=self._names.hexdigest(),
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )


def fit_from_pairs(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> ToneCurve:
    """Fit a curve on (input, target) arrays, consumed one at a time (a generator stays streaming).

    Raises:
        ConfigError: as :meth:`ToneAccumulator.add_pair` and :meth:`ToneAccumulator.fit`.
    """
    accumulator = ToneAccumulator()
    for inp, target in pairs:
        accumulator.add_pair(inp, target)
    return accumulator.fit()


def apply_tone(rgb: np.ndarray, curve: ToneCurve) -> np.ndarray:
    """Map each channel of an H x W x 3 uint8 RGB image through the curve's uint8 LUT.

    Raises:
        ValueError: ``rgb`` is not H x W x 3 uint8.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected H x W x 3 uint8 RGB, got {rgb.shape} {rgb.dtype}")
    table = np.ascontiguousarray(curve.lut_u8.T.reshape(LEVELS, 1, 3))  # cv2.LUT: one column per channel
    return cv2.LUT(np.ascontiguousarray(rgb), table)


def local_gain(curve: ToneCurve, window: int = GAIN_WINDOW) -> np.ndarray:
    """The curve's slope d(out)/d(in) at each level, shape (3, 256), averaged over ``window`` levels.

    Central differences (one-sided at the ends), then a moving average with edge padding. Zero where
    the curve is flat (including the flat extrapolation beyond the training data).
    """
    slope = np.gradient(curve.lut, axis=1)
    half = window // 2
    padded = np.pad(slope, ((0, 0), (half, half)), mode="edge")
    kernel = np.full(window, 1.0 / window)
    return np.stack([np.convolve(row, kernel, mode="valid")[:LEVELS] for row in padded])


def scaled_nlm_strength(
    rgb_input: np.ndarray, curve: ToneCurve, base_h: float, base_h_color: float
) -> tuple[float, float]:
    """NL-means ``(h, h_color)`` for denoising the *tone-mapped* image, scaled by the curve's gain.

    Reasoning: NL-means' ``h`` is a noise scale -- patches closer than about ``h`` are averaged --
    and the base strengths were chosen for the dark input. The curve maps ``v`` to ``f(v)``; locally
    ``f(v + n) ~ f(v) + f'(v) n``, so noise of std ``s`` around level ``v`` leaves the curve with std
    ``f'(v) s``. To denoise the brightened image as the base strength denoised the dark one, ``h``
    must grow by the same factor ``g = f'(v)``. ``g`` is read from :func:`local_gain` at the
    input's mean level per channel and averaged over the channels. This is first order: it ignores
    that the noise is signal-dependent (Poisson) and that one image spans several levels.

    ``g`` is zero where the curve is flat (an image whose mean lies beyond every training level),
    which turns denoising (almost) off -- OpenCV accepts h = 0; ``g < 1`` (a curve that compresses) weakens it.

    Raises:
        ValueError: ``rgb_input`` is not H x W x 3 uint8.
    """
    if rgb_input.ndim != 3 or rgb_input.shape[2] != 3 or rgb_input.dtype != np.uint8:
        raise ValueError(f"expected H x W x 3 uint8 RGB, got {rgb_input.shape} {rgb_input.dtype}")
    gains = local_gain(curve)
    means = rgb_input.reshape(-1, 3).mean(axis=0)
    levels = np.arange(LEVELS)
    g = float(np.mean([np.interp(means[c], levels, gains[c]) for c in range(3)]))
    if not math.isfinite(g):  # cannot happen for a valid curve; refuse rather than pass NaN to OpenCV
        raise ValueError(f"gain is not finite: {g}")
    return base_h * g, base_h_color * g


def tone_for_denoising(rgb: np.ndarray, spec: DenoiseSpec, curve: ToneCurve | None,
                       scale_by_gain: bool) -> tuple[np.ndarray, DenoiseSpec]:
    """Tone-correct ``rgb`` with ``curve`` (if any) and say how to denoise the result: ``spec``,
    its strength scaled by the curve's gain when ``scale_by_gain`` (brightening amplifies noise)."""
    if curve is None:
        return rgb, spec
    if scale_by_gain:
        h, h_color = scaled_nlm_strength(rgb, curve, spec.h, spec.h_color)
        spec = dataclasses.replace(spec, h=h, h_color=h_color)
    return apply_tone(rgb, curve), spec
