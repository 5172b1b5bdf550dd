"""The degradation that makes an input from its target, and how to measure it from pairs.

Measured by competitors on the real pairs (to within 0.25% residual MSE)::

    LR = clip(Q(g * Poisson(down4(GT) / g) + N(0, sigma2)), 0, 255)

with ``down4`` a 4x4 box mean, gain ``g`` ~ 2.49, read-noise variance ``sigma2`` ~ 3.1, noise
independent per channel and spatially white, and ``Q`` truncation (floor). :class:`ForwardModel`
synthesises inputs with it (training draws fresh noise from every target at every step);
:class:`ForwardAccumulator` streams pairs and fits its parameters back (``producer calibrate``).

The fit rests on one identity: for pixels whose noise-free value is ``mu``, the residual
``LR - down4(GT)`` has variance ``g * mu + sigma2 + 1/12`` (Poisson, read noise, uniform
quantisation error) and mean ``-1/2`` for floor, ``0`` for round. Levels close enough to 0 or 255 to
be clipped are left out of the fit.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

import numpy as np
from PIL import Image

from workers.errors import ConfigError

Kernel = Literal["box", "bicubic"]
Quantisation = Literal["floor", "round"]
SCALE = 4
LEVELS = 256
QUANTISATION_VARIANCE = 1.0 / 12.0  # of a uniform rounding error
# Brightness ratios (input mean / downscaled target mean) inside this band count as "equally dark":
# no tone stage. The real data measures 1.01; the old darkened sample 0.3-0.5.
TONE_FREE_BAND = (0.9, 1.1)
_CLIP_SIGMAS = 3.0  # a level is fitted only this many noise standard deviations from 0 and 255
_MIN_LEVEL_PIXELS = 20


@dataclass(frozen=True)
class ForwardModel:
    """The forward model's parameters; the defaults are the competition's measured values."""

    gain: float = 2.49
    read_variance: float = 3.1
    kernel: Kernel = "box"
    quantisation: Quantisation = "floor"

    def __post_init__(self) -> None:
        if self.kernel not in get_args(Kernel):
            raise ConfigError(f"forward model: kernel must be one of {get_args(Kernel)}, got {self.kernel!r}")
        if self.quantisation not in get_args(Quantisation):
            raise ConfigError(f"forward model: quantisation must be floor or round, got {self.quantisation!r}")
        if not (math.isfinite(self.gain) and self.gain >= 0 and math.isfinite(self.read_variance)
                and self.read_variance >= 0):
            raise ConfigError(f"forward model: gain and read variance must be >= 0, got {self.gain}, {self.read_variance}")

    def downscale(self, target: np.ndarray) -> np.ndarray:
        """The noise-free input: ``target`` (4H x 4W x 3) reduced to H x W x 3, as float64."""
        return downscale(target, self.kernel)

    def degrade(self, target: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A fresh noisy input (H x W x 3 uint8) for ``target``; the noise comes from ``rng``."""
        clean = self.downscale(target)
        np.clip(clean, 0, 255, out=clean)  # a bicubic kernel overshoots; light is never negative
        noisy = self.gain * rng.poisson(clean / self.gain) if self.gain > 0 else clean
        noisy += rng.normal(0.0, math.sqrt(self.read_variance), clean.shape)
        quantised = np.floor(noisy) if self.quantisation == "floor" else np.rint(noisy)
        return np.clip(quantised, 0, 255).astype(np.uint8)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ForwardModel:
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"forward model: {exc}") from None


BRIGHTNESS_POINTS = 21  # quantiles stored: probabilities 0, 0.05, ..., 1


@dataclass(frozen=True)
class BrightnessDistribution:
    """How bright the targets are: quantiles of their mean intensity (0-255, all channels), at evenly
    spaced probabilities from 0 to 1. Training brings every clean photo to a brightness drawn from
    it before synthesising its input, so photos teach the model the data's own darkness."""

    quantiles: tuple[float, ...]

    def __post_init__(self) -> None:
        q = self.quantiles
        if len(q) < 2 or any(not (math.isfinite(v) and 0 < v <= 255) for v in q) or any(b < a for a, b in itertools.pairwise(q)):
            raise ConfigError(f"brightness distribution: need at least 2 increasing quantiles in (0, 255], got {q}")

    def draw(self, rng: np.random.Generator) -> float:
        """One mean intensity, by inverse-CDF sampling between the stored quantiles."""
        position = rng.random() * (len(self.quantiles) - 1)
        low = min(int(position), len(self.quantiles) - 2)
        return float(np.interp(position - low, (0.0, 1.0), self.quantiles[low : low + 2]))

    @property
    def median(self) -> float:
        return float(np.interp(0.5, np.linspace(0, 1, len(self.quantiles)), self.quantiles))

    @classmethod
    def from_means(cls, means: np.ndarray | list[float], points: int = BRIGHTNESS_POINTS) -> BrightnessDistribution:
        """The distribution of measured per-image means (at least one; a floor of 1 keeps it positive)."""
        values = np.maximum(np.asarray(means, np.float64), 1.0)
        if values.size == 0:
            raise ConfigError("brightness distribution: no image to measure")
        return cls(tuple(round(float(v), 3) for v in np.quantile(values, np.linspace(0, 1, points))))

    def to_dict(self) -> dict[str, Any]:
        return {"mean_quantiles": list(self.quantiles)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BrightnessDistribution:
        try:
            return cls(tuple(float(v) for v in data["mean_quantiles"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"brightness distribution: malformed ({exc})") from None


# What competitors measured on the real targets: means about 30-55 of 255, centred near 41. The tails
# are widened a little so that a model trained on it does not meet an unseen brightness at the edges.
COMPETITION_BRIGHTNESS = BrightnessDistribution((22.0, 31.0, 36.0, 41.0, 46.0, 52.0, 65.0))


def downscale(target: np.ndarray, kernel: Kernel = "box") -> np.ndarray:
    """``target`` (4H x 4W x C, any numeric type) reduced 4x as float64: a 4x4 box mean, or
    Pillow's antialiased bicubic (what MATLAB's ``imresize`` does).

    Raises:
        ValueError: a side of ``target`` is not a multiple of 4.
    """
    height, width = target.shape[:2]
    if height % SCALE or width % SCALE:
        raise ValueError(f"target {width}x{height} is not a multiple of {SCALE} on both sides")
    if kernel == "box":
        blocks = target.reshape(height // SCALE, SCALE, width // SCALE, SCALE, -1).astype(np.float64)
        return blocks.mean(axis=(1, 3)).reshape(height // SCALE, width // SCALE, *target.shape[2:])
    size = (width // SCALE, height // SCALE)
    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(target[..., c], dtype=np.float32), mode="F")
                           .resize(size, Image.Resampling.BICUBIC), dtype=np.float64)
                for c in range(target.shape[2])]
    return np.stack(channels, axis=-1)


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
        self.histogram += np.bincount(levels * LEVELS + observed.ravel().astype(np.intp),
                                      minlength=LEVELS * LEVELS).reshape(LEVELS, LEVELS)
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
            raise ValueError(f"target {target.shape[1]}x{target.shape[0]} is not 4x the input {inp.shape[1]}x{inp.shape[0]}")
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
            model=ForwardModel(gain=round(max(gain, 0.0), 4), read_variance=round(max(read_variance, 0.0), 4),
                               kernel=kernel, quantisation=quantisation),
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
                "need training pairs with more mid-tone pixels")
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
            grid = [(gi, vi) for gi in g + g_step * np.arange(-2, 3) if gi > 0.01
                    for vi in v + v_step * np.arange(-2, 3) if vi >= 0.0]
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


def _negative_log_likelihood(mu: np.ndarray, histogram: np.ndarray, gain: float, read_variance: float,
                             quantisation: Quantisation) -> float:
    """-sum log P(value | level) under the forward model, every level's pixels at its mean clean value."""
    probabilities = value_probabilities(mu, ForwardModel(gain, read_variance, quantisation=quantisation))
    return float(-np.sum(histogram * np.log(np.maximum(probabilities, 1e-300))))


def value_probabilities(mu: np.ndarray, model: ForwardModel) -> np.ndarray:
    """P(input value = j | noise-free value mu) for j = 0..255, shape (len(mu), 256): a Poisson
    mixture of Gaussians, quantised, with everything below 0 and above 255 clipped onto the ends."""
    lam = np.maximum(np.asarray(mu, np.float64), 0.0) / model.gain
    k_max = int(lam.max() + 10 * math.sqrt(lam.max() + 1) + 10)
    k = np.arange(k_max)
    log_factorial = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, k_max)))])
    with np.errstate(divide="ignore", invalid="ignore"):
        log_pmf = k * np.log(lam)[:, None] - lam[:, None] - log_factorial
    pmf = np.exp(np.where(np.isnan(log_pmf), -np.inf, log_pmf))  # lam = 0: all mass at k = 0
    pmf[lam == 0, 0] = 1.0
    shift = 0.0 if model.quantisation == "floor" else 0.5  # value j collects [j, j+1) or [j-0.5, j+0.5)
    edges = np.arange(1, LEVELS) - shift  # the 255 inner edges between the 256 values
    sigma = max(math.sqrt(model.read_variance), 1e-3)
    cdf = _normal_cdf((edges[None, :] - model.gain * k[:, None]) / sigma)  # k x 255
    cdf = np.concatenate([np.zeros((k_max, 1)), cdf, np.ones((k_max, 1))], axis=1)
    return pmf @ np.diff(cdf, axis=1)


def _normal_cdf(z: np.ndarray) -> np.ndarray:
    """Standard normal CDF from erf (Abramowitz and Stegun 7.1.26, error below 1.5e-7): numpy has no erf."""
    x = np.abs(z) / math.sqrt(2.0)
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    erf = 1.0 - poly * np.exp(-x * x)
    return 0.5 * (1.0 + np.sign(z) * erf)
