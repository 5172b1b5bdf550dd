"""Fitting the forward model (:mod:`workers.ops.degrade`) to a dataset's training pairs: what
``producer calibrate`` measures.

The fit rests on one identity: for pixels whose noise-free value is ``mu``, the residual
``LR - down4(GT)`` has variance ``g * mu + sigma2 + 1/12`` (Poisson, read noise, uniform
quantisation error) and mean ``-1/2`` for floor, ``0`` for round. Levels close enough to 0 or 255 to
be clipped are left out of the fit; the exact likelihood of every observed value refines it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, get_args

import numpy as np

from workers.errors import ConfigError
from workers.ops.degrade import (
    LEVELS,
    QUANTISATION_VARIANCE,
    SCALE,
    BrightnessDistribution,
    ForwardModel,
    Kernel,
    Quantisation,
    downscale,
    value_probabilities,
)

# Brightness ratios (input mean / downscaled target mean) inside this band count as "equally dark":
# no tone stage. The real data measures 1.01; a darkened dataset 0.3-0.5.
TONE_FREE_BAND = (0.9, 1.1)
_CLIP_SIGMAS = 3.0  # a level is fitted only this many noise standard deviations from 0 and 255
_MIN_LEVEL_PIXELS = 20


@dataclass
class _LevelStats:
    """Per noise-free level (0-255): pixel count, sums of the residual, its square and the input."""

    count: np.ndarray = field(default_factory=lambda: np.zeros(LEVELS, np.float64))
    residual: np.ndarray = field(default_factory=lambda: np.zeros(LEVELS, np.float64))
    squared: np.ndarray = field(default_factory=lambda: np.zeros(LEVELS, np.float64))
    clean: np.ndarray = field(default_factory=lambda: np.zeros(LEVELS, np.float64))
    observed: np.ndarray = field(default_factory=lambda: np.zeros(LEVELS, np.float64))
    histogram: np.ndarray = field(default_factory=lambda: np.zeros((LEVELS, LEVELS), np.float64))  # level x value

    def add(self, clean: np.ndarray, observed: np.ndarray) -> None:
        levels = np.clip(np.rint(clean), 0, LEVELS - 1).astype(np.intp).ravel()
        residual = (observed - clean).ravel()
        self.histogram += np.bincount(
            levels * LEVELS + observed.ravel().astype(np.intp), minlength=LEVELS * LEVELS
        ).reshape(LEVELS, LEVELS)
        self.count += np.bincount(levels, minlength=LEVELS)
        self.residual += np.bincount(levels, weights=residual, minlength=LEVELS)
        self.squared += np.bincount(levels, weights=residual * residual, minlength=LEVELS)
        self.clean += np.bincount(levels, weights=clean.ravel(), minlength=LEVELS)
        self.observed += np.bincount(levels, weights=observed.ravel(), minlength=LEVELS)


@dataclass(frozen=True)
class ForwardFit:
    """The fitted model and how well the data supports it (all of it goes into calibration.json)."""

    model: ForwardModel
    brightness_ratio: float  # mean input / mean downscaled target; ~1: equally dark, no tone stage
    kernel_residuals: dict[str, float]  # residual variance left by each candidate kernel (lowest wins)
    mean_residual: float  # over the fitted levels: about -0.5 for floor, 0 for round
    variance_r2: float  # of the line variance = g * level + (sigma2 + 1/12) through the fitted levels
    relative_mse_error: float  # |measured - predicted| / measured mean squared residual (all levels, exact model)
    fitted_levels: tuple[int, int]  # lowest and highest level the noise fit used
    pixels: int
    pairs: int
    target_brightness: BrightnessDistribution | None = None  # None in artifacts written before it existed

    @property
    def tone_applies(self) -> bool:
        """True when input and target are clearly not equally bright (outside :data:`TONE_FREE_BAND`)."""
        low, high = TONE_FREE_BAND
        return not low <= self.brightness_ratio <= high

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["model"] = self.model.to_dict()
        data["fitted_levels"] = list(self.fitted_levels)
        data["target_brightness"] = self.target_brightness.to_dict() if self.target_brightness else None
        data["tone_applies"] = self.tone_applies
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ForwardFit:
        data = {k: v for k, v in data.items() if k != "tone_applies"}
        try:
            data["model"] = ForwardModel.from_dict(data["model"])
            data["fitted_levels"] = tuple(data["fitted_levels"])
            brightness = data.get("target_brightness")
            data["target_brightness"] = BrightnessDistribution.from_dict(brightness) if brightness else None
            return cls(**data)
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"forward model fit: missing or unexpected field ({exc})") from None


class ForwardAccumulator:
    """Streams (input, target) pairs into per-level statistics for every candidate kernel.

    Memory is a few arrays of 256 values, and one number per pair (its target's mean). Not thread-safe.
    """

    def __init__(self) -> None:
        self._stats: dict[Kernel, _LevelStats] = {k: _LevelStats() for k in get_args(Kernel)}
        self._target_means: list[float] = []
        self.pairs = 0

    def add_pair(self, inp: np.ndarray, target: np.ndarray) -> None:
        """Add one pair: ``inp`` H x W x 3 and ``target`` exactly 4H x 4W x 3 (uint8).

        Raises:
            ValueError: the target is not exactly 4x the input.
        """
        if target.shape[:2] != (inp.shape[0] * SCALE, inp.shape[1] * SCALE):
            raise ValueError(
                f"target {target.shape[1]}x{target.shape[0]} is not 4x the input {inp.shape[1]}x{inp.shape[0]}"
            )
        observed = inp.astype(np.float64)
        for kernel, stats in self._stats.items():
            stats.add(downscale(target, kernel), observed)
        self._target_means.append(float(target.mean()))
        self.pairs += 1

    def fit(self) -> ForwardFit:
        """Fit kernel, brightness ratio, quantisation, gain and read variance; record the targets' brightness.

        Raises:
            ConfigError: no pixel was added, or too few levels stay clear of clipping to fit noise.
        """
        box = self._stats["box"]
        if not box.count.sum():
            raise ConfigError("forward model: no training pixels to fit")
        ratio = float(box.observed.sum() / max(box.clean.sum(), 1e-9))
        residuals = {kernel: _mid_tone_variance(stats) for kernel, stats in self._stats.items()}
        kernel = min(residuals, key=residuals.__getitem__)
        stats = self._stats[kernel]
        gain, read_variance, r2, mean_residual, error, levels = _fit_noise(stats, ratio)
        low, high = TONE_FREE_BAND
        if low <= ratio <= high:
            # The line's intercept is an extrapolation from mid-tones; the darkest levels pin the read
            # noise down, and only the exact (clipped, quantised) likelihood can use them.
            gain, read_variance, quantisation = _maximum_likelihood(stats, gain, read_variance)
            error = _relative_mse_error(stats, ForwardModel(gain, read_variance, quantisation=quantisation))
        else:
            # Darkened inputs shift the residual's mean by the tone change: quantisation is then not
            # measurable, and truncation (what the real data shows) is assumed.
            quantisation = "floor"
        return ForwardFit(
            model=ForwardModel(
                gain=round(max(gain, 0.0), 4),
                read_variance=round(max(read_variance, 0.0), 4),
                kernel=kernel,
                quantisation=quantisation,
            ),
            brightness_ratio=round(ratio, 4),
            kernel_residuals={k: round(v, 4) for k, v in residuals.items()},
            mean_residual=round(mean_residual, 4),
            variance_r2=round(r2, 5),
            relative_mse_error=round(error, 5),
            fitted_levels=levels,
            pixels=int(box.count.sum()),
            pairs=self.pairs,
            target_brightness=BrightnessDistribution.from_means(self._target_means),
        )


def _level_moments(stats: _LevelStats) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(populated, safe counts, residual variance about each level's own mean) per level."""
    populated = stats.count >= _MIN_LEVEL_PIXELS
    count = np.where(populated, stats.count, 1.0)
    mean = stats.residual / count
    return populated, count, np.maximum(stats.squared / count - mean * mean, 1e-6)


def _mid_tone_variance(stats: _LevelStats) -> float:
    """Residual variance over levels 32-223 (no clipping there): what a wrong kernel adds to."""
    populated, _, variance = _level_moments(stats)
    band = populated & (np.arange(LEVELS) >= 32) & (np.arange(LEVELS) <= 223)
    if not band.any():
        band = populated
    return float(np.sum(stats.count[band] * variance[band]) / max(np.sum(stats.count[band]), 1.0))


def _fit_noise(stats: _LevelStats, ratio: float) -> tuple[float, float, float, float, float, tuple[int, int]]:
    """(gain, read variance, R^2, mean residual, relative MSE error, level range).

    Weighted least squares of each level's residual variance (about that level's own mean, so a tone
    change cannot inflate it) against the level's mean input intensity, through the levels that
    clipping cannot reach. The line is refitted once, with the clipping margin from the first fit.
    """
    populated, count, variance = _level_moments(stats)
    # Equally dark pairs: the noise-free level itself. Darkened ones: the input's own mean intensity at
    # that level (the noise was added after the tone change), its truncation offset put back.
    tone_free = TONE_FREE_BAND[0] <= ratio <= TONE_FREE_BAND[1]
    intensity = stats.clean / count if tone_free else stats.observed / count + 0.5
    keep = populated & (intensity > 20) & (intensity < 235)
    gain = read = 0.0
    for _ in range(2):
        if keep.sum() < 3:
            raise ConfigError(
                f"forward model: only {int(keep.sum())} intensity levels are clear of clipping; "
                "need training pairs with more mid-tone pixels"
            )
        weights = stats.count[keep] / variance[keep] ** 2  # Var(sample variance) ~ 2 v^2 / n
        gain, intercept = np.polyfit(intensity[keep], variance[keep], 1, w=np.sqrt(weights))
        read = intercept - QUANTISATION_VARIANCE
        predicted_sd = np.sqrt(np.maximum(gain * intensity + intercept, 1e-6))
        keep = populated & (intensity > _CLIP_SIGMAS * predicted_sd) & (intensity < 255 - _CLIP_SIGMAS * predicted_sd)
    if keep.sum() < 3:
        raise ConfigError("forward model: too few intensity levels clear of clipping to fit the noise")
    predicted = gain * intensity[keep] + read + QUANTISATION_VARIANCE
    n = stats.count[keep]
    residual_ss = float(np.sum(n * (variance[keep] - predicted) ** 2))
    total_ss = float(np.sum(n * (variance[keep] - np.average(variance[keep], weights=n)) ** 2))
    r2 = 1.0 - residual_ss / total_ss if total_ss > 0 else 1.0
    measured = float(np.sum(n * variance[keep]) / n.sum())
    error = abs(measured - float(np.sum(n * predicted) / n.sum())) / measured
    mean_residual = float(np.sum(stats.residual[keep]) / n.sum())
    levels = np.flatnonzero(keep)
    return float(gain), float(read), r2, mean_residual, error, (int(levels[0]), int(levels[-1]))


def _maximum_likelihood(stats: _LevelStats, gain: float, read_variance: float) -> tuple[float, float, Quantisation]:
    """Refine (gain, read variance) by the exact likelihood of every observed value at every level,
    clipping and quantisation included, on a shrinking grid around the line fit; pick floor or round
    by the same likelihood."""
    populated = stats.count >= _MIN_LEVEL_PIXELS
    mu = (stats.clean / np.where(populated, stats.count, 1.0))[populated]
    histogram = stats.histogram[populated]
    best: tuple[float, float, float, Quantisation] | None = None
    for quantisation in get_args(Quantisation):
        g, v = max(gain, 0.05), max(read_variance, 0.05)
        g_step, v_step = 0.1 * g, max(1.0, 0.5 * v)
        for _ in range(5):
            grid = [
                (gi, vi)
                for gi in g + g_step * np.arange(-2, 3)
                if gi > 0.01
                for vi in v + v_step * np.arange(-2, 3)
                if vi >= 0.0
            ]
            scores = [_negative_log_likelihood(mu, histogram, gi, vi, quantisation) for gi, vi in grid]
            g, v = grid[int(np.argmin(scores))]
            g_step, v_step = g_step / 2.5, v_step / 2.5
        score = _negative_log_likelihood(mu, histogram, g, v, quantisation)
        if best is None or score < best[0]:
            best = (score, float(g), float(v), quantisation)
    assert best is not None
    return best[1], best[2], best[3]


def _relative_mse_error(stats: _LevelStats, model: ForwardModel) -> float:
    """How far the model's mean squared residual, clipping included, is from the measured one."""
    populated = stats.count >= _MIN_LEVEL_PIXELS
    n = stats.count[populated]
    mu = stats.clean[populated] / n
    values = np.arange(LEVELS, dtype=np.float64)
    predicted = np.sum(value_probabilities(mu, model) * (values[None, :] - mu[:, None]) ** 2, axis=1)
    measured = float(np.sum(stats.squared[populated]))
    return abs(measured - float(np.sum(n * predicted))) / measured


def _negative_log_likelihood(
    mu: np.ndarray, histogram: np.ndarray, gain: float, read_variance: float, quantisation: Quantisation
) -> float:
    """-sum log P(value | level) under the forward model, every level's pixels at its mean clean value."""
    probabilities = value_probabilities(mu, ForwardModel(gain, read_variance, quantisation=quantisation))
    return float(-np.sum(histogram * np.log(np.maximum(probabilities, 1e-300))))
