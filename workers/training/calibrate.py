"""Calibration: what a dataset's training pairs say about its degradation, stored as ``calibration.json``.

One streaming pass over the pairs fits the forward model (downscale kernel, brightness ratio, noise
gain and read variance, quantisation: :mod:`workers.ops.degrade`) and a tone curve
(:mod:`workers.ops.tone`); the curve is applied by the pipelines only when the brightness ratio is
clearly not 1. A second pass over an evenly spread subset of the pairs picks the NL-means strength
of the classical presets by PSNR. Memory holds one pair at a time.

The artifact also reads the older tone-curve-only artifact, as a calibration whose curve applies.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from workers.errors import ConfigError, ObjectNotFoundError
from workers.io.imageio import DecodeLimits
from workers.io.storage import LocalStorage, Storage, StorageFactory, is_local, split_location
from workers.io.submission import grey_subsample
from workers.ops.denoise import DenoiseSpec, denoise
from workers.ops.metrics import psnr
from workers.ops.resample import bicubic_x4
from workers.ops.tone import ARTIFACT_KIND as TONE_KIND
from workers.ops.tone import ToneAccumulator, ToneCurve, tone_for_denoising
from workers.settings import Settings
from workers.training.destinations import check_task_dataset, check_task_output
from workers.training.forward_fit import ForwardAccumulator, ForwardFit
from workers.training.pairs import (
    TRAINING_LIMITS,
    PairKeys,
    load_pair,
    load_training_pairs,
    refuse_split_root,
    training_pairs,
)

logger = logging.getLogger(__name__)

CALIBRATION_FILE = "calibration.json"
ARTIFACT_KIND = "lowlight-sr/calibration"
ARTIFACT_VERSION = 1
NLM_CANDIDATES = (0.0, 3.0, 5.0, 7.0, 9.0, 11.0, 13.0, 16.0)  # h = hColor; 0 means no denoising
NLM_SEARCH_PAIRS = 32  # pairs the strength search scores (evenly spread over the listing)
SEED_NLM = DenoiseSpec()


@dataclass(frozen=True)
class Calibration:
    """The fitted degradation of one dataset and what the classical presets should do about it."""

    forward: ForwardFit | None  # None for an old tone-curve-only artifact
    tone: ToneCurve
    nlm_h: float  # NL-means strength (h and hColor) for the classical presets; 0: do not denoise
    nlm_search: tuple[tuple[float, float], ...] = ()  # (h, mean PSNR of NL-means + bicubic) on training pairs
    n_pairs: int = 0
    skipped: tuple[tuple[str, str], ...] = ()  # (file, reason) of the pairs left out
    names_sha256: str = ""
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def tone_applies(self) -> bool:
        """Whether the pipelines run the tone stage: only when input and target differ in brightness."""
        return self.forward is None or self.forward.tone_applies

    @property
    def curve(self) -> ToneCurve | None:
        """The tone curve the pipelines apply, or None when input and target are equally dark."""
        return self.tone if self.tone_applies else None

    def denoise_spec(self, base: DenoiseSpec = SEED_NLM) -> DenoiseSpec:
        """``base`` with the calibrated strength (``none`` when calibration found denoising hurts)."""
        if self.nlm_h <= 0:
            return DenoiseSpec(method="none")
        return DenoiseSpec(method="nlm", h=self.nlm_h, h_color=self.nlm_h, template=base.template, search=base.search)

    def summary(self) -> list[str]:
        """What was measured, in a few lines for ``producer calibrate`` to print."""
        lines = []
        fit = self.forward
        if fit is not None:
            m = fit.model
            lines += [
                f"forward model: {m.kernel} 4x downscale, gain {m.gain:.3f}, read variance {m.read_variance:.3f}, "
                f"{m.quantisation} quantisation ({fit.pixels:,} pixel samples; variance line R^2 {fit.variance_r2:.3f}, "
                f"model vs measured mean squared residual {100 * fit.relative_mse_error:.2f}%)",
                "kernel residual variance: " + ", ".join(f"{k} {v:g}" for k, v in fit.kernel_residuals.items())
                + " (lowest wins)",
                f"brightness ratio input/target {fit.brightness_ratio:g}: "
                + ("tone curve applied (outside 0.9-1.1)" if self.tone_applies else "equally dark, no tone stage"),
            ]
            if fit.target_brightness is not None:
                q = fit.target_brightness.quantiles
                lines.append(f"target brightness (mean of 255): median {fit.target_brightness.median:.1f}, "
                             f"range {q[0]:.1f}-{q[-1]:.1f} (photos used for training are brought to it)")
        else:
            lines.append("no forward model (an older artifact, or too few mid-tones to fit one): the tone stage applies")
        search = ", ".join(f"h={h:g} {p:.2f} dB" for h, p in self.nlm_search)
        lines.append(f"NL-means for quality/perceptual: h={self.nlm_h:g}" + (f" (NL-means + bicubic on training pairs: {search})" if search else ""))
        lines += [f"skipped {f}: {r}" for f, r in self.skipped]
        return lines

    def to_json(self) -> bytes:
        document = {
            "kind": ARTIFACT_KIND,
            "version": ARTIFACT_VERSION,
            "forward_model": self.forward.to_dict() if self.forward else None,
            "tone_applies": self.tone_applies,
            "tone_curve": json.loads(self.tone.to_json()),
            "nlm": {"h": self.nlm_h, "h_color": self.nlm_h,
                    "search": [{"h": h, "psnr": round(p, 4)} for h, p in self.nlm_search]},
            "n_pairs": self.n_pairs,
            "skipped": [{"file": f, "reason": r} for f, r in self.skipped],
            "names_sha256": self.names_sha256,
            "created_at": self.created_at,
        }
        return json.dumps(document, indent=1, allow_nan=False).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> Calibration:
        """Parse a calibration artifact, or an older tone-curve artifact (whose curve then applies).

        Raises:
            ConfigError: not JSON, another kind of document, an unsupported version or a bad field.
        """
        try:
            document = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"calibration: not a JSON document ({exc})") from None
        kind = document.get("kind") if isinstance(document, dict) else None
        if kind == TONE_KIND:
            curve = ToneCurve.from_json(data)
            return cls(None, curve, SEED_NLM.h, n_pairs=curve.n_pairs, names_sha256=curve.names_sha256,
                       created_at=curve.created_at)
        if kind != ARTIFACT_KIND:
            raise ConfigError(f"calibration: kind must be {ARTIFACT_KIND!r} (or {TONE_KIND!r}), got {kind!r}")
        if document.get("version") != ARTIFACT_VERSION:
            raise ConfigError(f"calibration: unsupported version {document.get('version')!r} (this code reads {ARTIFACT_VERSION})")
        try:
            forward = document["forward_model"]
            return cls(
                forward=ForwardFit.from_dict(forward) if forward is not None else None,
                tone=ToneCurve.from_json(json.dumps(document["tone_curve"]).encode()),
                nlm_h=float(document["nlm"]["h"]),
                nlm_search=tuple((float(s["h"]), float(s["psnr"])) for s in document["nlm"]["search"]),
                n_pairs=int(document["n_pairs"]),
                skipped=tuple((str(s["file"]), str(s["reason"])) for s in document["skipped"]),
                names_sha256=str(document["names_sha256"]),
                created_at=str(document["created_at"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"calibration: missing or malformed field ({type(exc).__name__}: {exc})") from None


def calibrate(dataset: Storage, label: str = "", limits: DecodeLimits = TRAINING_LIMITS,
              candidates: Sequence[float] = NLM_CANDIDATES, search_pairs: int = NLM_SEARCH_PAIRS) -> Calibration:
    """Fit everything on the dataset's training pairs (never val/ or test/), streaming.

    Raises:
        ConfigError: as :func:`~workers.training.pairs.training_pairs`; no readable pair; too few
            mid-tone pixels to fit the noise.
    """
    listing = training_pairs(dataset, label)
    skipped = list(listing.skipped)
    tone, forward, names = ToneAccumulator(), ForwardAccumulator(), hashlib.sha256()
    usable: list[PairKeys] = []
    for pair, inp, target in load_training_pairs(dataset, listing.pairs, skipped, limits):
        tone.add_pair(inp, target, name=pair.name)
        forward.add_pair(inp, target)
        names.update(pair.name.encode("utf-8") + b"\n")
        usable.append(pair)
    if not usable:
        raise ConfigError(f"no readable training pair in {label or dataset.url('train')}: "
                          + "; ".join(f"{f}: {r}" for f, r in skipped[:3]))
    for key, reason in skipped:
        logger.warning("calibration skips %s: %s", key, reason)
    curve = tone.fit()
    try:
        fit: ForwardFit | None = forward.fit()
    except ConfigError as exc:  # e.g. flat synthetic pairs: the tone curve still stands, and then applies
        logger.warning("calibration: the forward model could not be fitted: %s", exc)
        fit = None
        skipped.append(("forward model", str(exc)))
    applied = curve if fit is None or fit.tone_applies else None
    subset = [usable[i] for i in np.unique(np.linspace(0, len(usable) - 1, min(search_pairs, len(usable))).astype(int))]
    search = search_nlm_strength(lambda: (load_pair(dataset, p, limits) for p in subset), applied, candidates)
    best = max(search, key=lambda item: item[1])[0]
    return Calibration(fit, curve, best, tuple(search), len(usable), tuple(skipped), names.hexdigest())


def search_nlm_strength(pairs: Callable[[], Any], curve: ToneCurve | None,
                        candidates: Sequence[float]) -> list[tuple[float, float]]:
    """(h, mean competition PSNR) of [tone +] NL-means(h, hColor = h) + bicubic for each candidate.

    ``pairs()`` yields (input, target) arrays afresh for each candidate, so only one pair is in
    memory at a time. With a tone curve the strength is the base the gain scaling starts from, as
    in the ``quality`` preset.
    """
    results = []
    for h in candidates:
        spec = DenoiseSpec(h=h, h_color=h) if h > 0 else DenoiseSpec(method="none")
        scores = []
        for inp, target in pairs():
            image, effective = tone_for_denoising(inp, spec, curve, scale_by_gain=curve is not None)
            scores.append(psnr(grey_subsample(bicubic_x4(denoise(image, effective))), grey_subsample(target)))
        results.append((float(h), float(np.mean(scores))))
    return results


def default_location(dataset: str) -> str:
    """Where a dataset's calibration artifact lives: ``DATASET/calibration.json``."""
    return f"{dataset.rstrip('/')}/{CALIBRATION_FILE}"


def load_calibration(location: str, storages: StorageFactory) -> Calibration:
    """Read a calibration (or older tone-curve) artifact from a local path or a storage URL.

    Raises:
        ConfigError: missing, unreadable or invalid artifact (the message names it).
    """
    folder, name = split_location(location)
    try:
        data = storages.open(folder).get(name)
    except ObjectNotFoundError:
        raise ConfigError(f"no calibration artifact at {location}; run `producer calibrate DATASET`") from None
    try:
        return Calibration.from_json(data)
    except ConfigError as exc:
        raise ConfigError(f"calibration artifact {location}: {exc}") from None


def open_dataset(dataset: str, storages: StorageFactory) -> tuple[Storage, str]:
    """The dataset's storage and a label for messages; a local root inside val/ or test/ is refused."""
    if is_local(dataset):
        refuse_split_root(str(Path(dataset).resolve()))
        return LocalStorage(dataset), dataset
    return storages.open(dataset), dataset


def task_destination(dataset: str, output: str | None, settings: Settings | None = None) -> str:
    """Where the calibrate task may store ``dataset``'s artifact (``output``, default
    ``DATASET/calibration.json``): that, or a location TASK_OUTPUTS allows, for a dataset inside the
    run store (:mod:`workers.training.destinations`). ``settings``: this process's, by default.

    Raises:
        ConfigError: anywhere else.
    """
    settings = settings or Settings.from_env()
    check_task_dataset(dataset, settings)
    return check_task_output(output or default_location(dataset), dataset, CALIBRATION_FILE, settings)


def calibrate_here(dataset: str, output: str | None, storages: StorageFactory) -> tuple[Calibration, str]:
    """Calibrate on ``dataset``'s training pairs in this process and store the artifact; return it and where."""
    storage, label = open_dataset(dataset, storages)
    calibration = calibrate(storage, label)
    destination = output or default_location(dataset)
    folder, name = split_location(destination)
    storages.open(folder).put(name, calibration.to_json())
    return calibration, destination
