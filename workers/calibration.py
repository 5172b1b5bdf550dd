"""Tone-curve artifacts: fit one next to a dataset, find it again, load it for a run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from workers.denoise import DenoiseSpec
from workers.errors import ConfigError, ObjectNotFoundError
from workers.presets import NEEDS_CURVE, build_pipeline
from workers.runs import PipelineSpec
from workers.storage import StorageFactory
from workers.tone import ToneCurve, fit_from_dataset

CALIBRATION_FILE = "calibration.json"


@dataclass(frozen=True)
class PipelineChoice:
    """What the user asked for on the command line, before the curve is looked up."""

    preset: str
    denoise: DenoiseSpec
    calibration: str | None = None  # artifact path or s3:// URL
    denoise_on: str = "cpu"  # "gpu": NL-means fused into the GPU task


def split_location(location: str) -> tuple[str, str]:
    """``dir/calibration.json`` or ``s3://bucket/prefix/calibration.json`` -> (folder URL, file name)."""
    folder, _, name = location.rstrip("/").rpartition("/")
    if not name:
        raise ConfigError(f"not a file location: {location!r}")
    return folder or ".", name


def load_curve(location: str, storages: StorageFactory) -> ToneCurve:
    """Read a tone-curve artifact from a local path or an s3:// URL.

    Raises:
        ConfigError: missing, unreadable or invalid artifact (the message names it).
    """
    folder, name = split_location(location)
    try:
        data = storages.open(folder).get(name)
    except ObjectNotFoundError:
        raise ConfigError(f"no calibration artifact at {location}; run `producer calibrate DATASET`") from None
    try:
        return ToneCurve.from_json(data)
    except ConfigError as exc:
        raise ConfigError(f"calibration artifact {location}: {exc}") from None


def default_location(dataset: str) -> str:
    return f"{dataset.rstrip('/')}/{CALIBRATION_FILE}"


def resolve_pipeline(choice: PipelineChoice, dataset: str | None, storages: StorageFactory) -> PipelineSpec:
    """The run's pipeline: an explicit artifact is always used; presets that need a curve look for
    ``calibration.json`` at the dataset root."""
    location = choice.calibration
    if location is None and choice.preset in NEEDS_CURVE and dataset is not None:
        candidate = default_location(dataset)
        folder, name = split_location(candidate)
        if storages.open(folder).exists(name):
            location = candidate
    curve = load_curve(location, storages) if location else None
    return dataclasses.replace(build_pipeline(choice.preset, choice.denoise, curve), denoise_on=choice.denoise_on)


def calibrate_here(dataset: str, output: str | None, storages: StorageFactory) -> tuple[ToneCurve, str]:
    """Fit on ``dataset``'s training pairs in this process and store the artifact; return it and where."""
    root = Path(dataset) if not dataset.startswith("s3://") else storages.open(dataset)
    curve = fit_from_dataset(root)
    destination = output or default_location(dataset)
    folder, name = split_location(destination)
    storages.open(folder).put(name, curve.to_json())
    return curve, destination
