"""Calibration: what the training pairs say about the degradation, fitted and stored as an artifact."""

from __future__ import annotations

from pathlib import Path

from workers.errors import ConfigError, ObjectNotFoundError
from workers.io.imageio import DecodeLimits
from workers.io.storage import LocalStorage, Storage, StorageFactory, is_local, split_location
from workers.ops.tone import ToneAccumulator, ToneCurve
from workers.training.pairs import TRAINING_LIMITS, load_training_pairs, refuse_split_root, training_pairs

CALIBRATION_FILE = "calibration.json"


def fit_from_dataset(dataset: Storage | Path, limits: DecodeLimits = TRAINING_LIMITS) -> ToneCurve:
    """Fit on every pair :func:`training_pairs` lists, streaming; provenance hashes the input names.

    ``dataset`` is a dataset root: a local directory or any :class:`Storage` (e.g. on S3).

    Raises:
        ConfigError: as :func:`training_pairs`, :func:`load_training_pairs` and :meth:`ToneAccumulator.add_pair`
            (a target that is not exactly 4x its input is named) and :meth:`ToneAccumulator.fit`.
    """
    label = ""
    if isinstance(dataset, Path):
        refuse_split_root(str(dataset.resolve()))
        label, dataset = str(dataset), LocalStorage(dataset)
    keys = training_pairs(dataset, label)
    accumulator = ToneAccumulator()
    for (inp_key, _), (inp, target) in zip(keys, load_training_pairs(dataset, keys, limits), strict=True):
        accumulator.add_pair(inp, target, name=inp_key.rsplit("/", 1)[1])
    return accumulator.fit()


def default_location(dataset: str) -> str:
    """Where a dataset's calibration artifact lives: ``DATASET/calibration.json``."""
    return f"{dataset.rstrip('/')}/{CALIBRATION_FILE}"


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


def calibrate_here(dataset: str, output: str | None, storages: StorageFactory) -> tuple[ToneCurve, str]:
    """Fit on ``dataset``'s training pairs in this process and store the artifact; return it and where."""
    curve = fit_from_dataset(storages.open(dataset) if not is_local(dataset) else Path(dataset))
    destination = output or default_location(dataset)
    folder, name = split_location(destination)
    storages.open(folder).put(name, curve.to_json())
    return curve, destination
