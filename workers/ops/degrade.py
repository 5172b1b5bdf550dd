"""The degradation that makes an input from its target.

Measured by competitors on the real pairs (to within 0.25% residual MSE)::

    LR = clip(Q(g * Poisson(down4(GT) / g) + N(0, sigma2)), 0, 255)

with ``down4`` a 4x4 box mean, gain ``g`` ~ 2.49, read-noise variance ``sigma2`` ~ 3.1, noise
independent per channel and spatially white, and ``Q`` truncation (floor). :class:`ForwardModel`
synthesises inputs with it (training draws fresh noise from every target at every step), and
:func:`value_probabilities` is the exact distribution of an input value given its noise-free level.
Fitting its parameters to pairs (``producer calibrate``) is a training concern:
:mod:`workers.training.forward_fit`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import numpy as np
from PIL import Image

from workers.errors import ConfigError

Kernel = Literal["box", "bicubic"]
Quantisation = Literal["floor", "round"]
SCALE = 4
LEVELS = 256
QUANTISATION_VARIANCE = 1.0 / 12.0  # of a uniform rounding error


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
