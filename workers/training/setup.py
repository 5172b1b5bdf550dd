"""Building a trainer from names: the dataset, its calibration, the start checkpoint, the photos it
learns from and the output, then :class:`~workers.training.finetune.Trainer`."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from workers.errors import ConfigError
from workers.io.models import load_registry, models_folder
from workers.io.storage import StorageFactory, split_location
from workers.io.weights import (
    CHECKPOINT_PREFIX,
    WeightsRef,
    check_not_torchscript,
    fetch_checkpoint,
    model_cache_dir,
    resolve_checkpoint,
    stored_checkpoint,
)
from workers.ops.degrade import COMPETITION_BRIGHTNESS, ForwardModel
from workers.settings import Settings
from workers.training.artifacts import TrainingOutput, default_output
from workers.training.calibrate import (
    Calibration,
    calibrate,
    default_location,
    load_calibration,
    open_dataset,
)
from workers.training.config import TrainConfig
from workers.training.data import TrainingData
from workers.training.destinations import SHIPPED_PREFIX
from workers.training.photos import CORPUS_MANIFEST, PHOTOS_FOLDER, PhotoListing, has_prefix, list_photos

if TYPE_CHECKING:
    from workers.training.finetune import Trainer

logger = logging.getLogger(__name__)


def dataset_calibration(dataset_url: str, storages: StorageFactory, note: Callable[[str], None]) -> Calibration:
    """The dataset's ``calibration.json``; made (and stored) first when there is none."""
    location = default_location(dataset_url)
    folder, name = split_location(location)
    if storages.open(folder).exists(name):
        return load_calibration(location, storages)
    note(f"no {location}: calibrating on the training pairs first")
    storage, label = open_dataset(dataset_url, storages)
    calibration = calibrate(storage, label)
    storages.open(folder).put(name, calibration.to_json())
    return calibration


def make_trainer(
    dataset_url: str | None,
    output_url: str | None,
    start_ref: str | None,
    config: TrainConfig,
    settings: Settings,
    storages: StorageFactory,
    restart: bool = False,
    note: Callable[[str], None] = logger.info,
    photos_url: str | None = None,
) -> Trainer:
    """Everything resolved and loaded, ready to :meth:`~Trainer.run`.

    Learns from ``dataset_url``'s training pairs, from clean photos (``photos_url``, else the
    dataset's own ``photos/`` folder when it has one), or both. With no dataset the degradation is
    the competition's (:class:`ForwardModel` defaults, :data:`COMPETITION_BRIGHTNESS`).

    Raises:
        ConfigError: nothing to learn from; the dataset is a val/ or test/ split or has no usable
            pair; a photo folder has no usable photo; the start checkpoint is missing, not a 4x RGB
            model, or cannot be downloaded; a saved state is corrupt; no output was named for a
            photo-only run.
    """
    if dataset_url is None and photos_url is None:
        raise ConfigError("nothing to train on: give a DATASET with train/ pairs, or --photos DIR (or both)")
    if output_url is None and dataset_url is None:
        raise ConfigError("training on photos alone needs -o/--output (where the model goes)")
    output = TrainingOutput.at(output_url or default_output(dataset_url or ""), storages)
    data = training_data(dataset_url, photos_url, storages, note)
    if data.calibration and data.calibration.get("tone_applies"):
        # Fresh inputs come from the forward model, which has no tone change: on darkened pairs they
        # would teach the model the wrong brightness. Train on the real inputs only.
        note(
            "inputs are darker than their targets: training on the real inputs only (no fresh degradations, no photos)"
        )
        config = dataclasses.replace(config, fresh_share=0.0)
        data = dataclasses.replace(data, photos=None)
    from workers.training.finetune import Trainer  # torch: only where training runs

    start = resolve_start(start_ref, settings, storages)
    return Trainer(data, output, start.path, start.source, config, settings.device, settings.precision, restart)


def resolve_start(start_ref: str | None, settings: Settings, storages: StorageFactory) -> WeightsRef:
    """The checkpoint training starts from: the one named (a path, ``hf:...``, ``shipped:NAME``, or
    ``checkpoint:<sha256>.<ext>`` in the run store), else the shipped model (``SHIPPED_MODEL``, or the
    registry's default), checked against its hash.

    Raises:
        ConfigError: the named file is missing, TorchScript (unless ALLOW_TORCHSCRIPT), or cannot be
            downloaded; the shipped model is missing or fails its hash check.
        TransientError: a run store checkpoint could not be fetched, or does not have its hash.
    """
    if start_ref and start_ref.startswith(CHECKPOINT_PREFIX):
        check_not_torchscript(start_ref, settings)
        key, sha256 = stored_checkpoint(start_ref)
        path = fetch_checkpoint(storages.open(settings.storage_url), key, sha256, model_cache_dir(settings))
        return WeightsRef(path, start_ref)
    if start_ref and not start_ref.startswith(SHIPPED_PREFIX):
        return resolve_checkpoint(start_ref, settings)
    registry = load_registry(models_folder(settings.models_dir))
    name = (start_ref or "").removeprefix(SHIPPED_PREFIX) or settings.shipped_model or registry.default
    path = registry.path(name)
    return WeightsRef(path, f"{SHIPPED_PREFIX}{name}")


def training_data(
    dataset_url: str | None, photos_url: str | None, storages: StorageFactory, note: Callable[[str], None]
) -> TrainingData:
    """The pairs, photos, forward model and brightness a run learns from (see :func:`make_trainer`)."""
    forward, brightness, summary = ForwardModel(), COMPETITION_BRIGHTNESS, None
    dataset, label = None, ""
    if dataset_url is not None:
        dataset, label = open_dataset(dataset_url, storages)
        calibration = dataset_calibration(dataset_url, storages, note)
        fit = calibration.forward
        forward = fit.model if fit else ForwardModel()
        if fit is not None and fit.target_brightness is not None:
            brightness = fit.target_brightness
        elif photos_url is not None or has_prefix(dataset, PHOTOS_FOLDER):
            note(
                "the calibration predates target brightness: photos are darkened to the competition's "
                "(re-run `producer calibrate` to measure this dataset's)"
            )
        summary = {
            "forward_model": forward.to_dict(),
            "tone_applies": calibration.tone_applies,
            "created_at": calibration.created_at,
        }
    else:
        note("no dataset: the competition's forward model (gain 2.49, read variance 3.1, box, floor) and dark targets")
    photos = None
    corpus = default_corpus(storages.settings)
    if photos_url is not None:
        photos = open_photos(photos_url, storages)
    elif dataset is not None and dataset_url is not None and has_prefix(dataset, PHOTOS_FOLDER):
        photos = open_photos(f"{dataset_url.rstrip('/')}/{PHOTOS_FOLDER}", storages)
    elif dataset is not None and corpus is not None:
        photos = open_photos(corpus, storages)
        note(f"mixing in the photo corpus at {corpus} (PHOTO_CORPUS; empty: pairs alone)")
    if photos is not None:
        note(f"photos: {len(photos.keys)} files in {photos.label}")
    return TrainingData(forward, brightness, dataset, label, photos, summary)


def default_corpus(settings: Settings) -> str | None:
    """``PHOTO_CORPUS`` when it is a local folder holding photos (``make corpus``), else None."""
    if not settings.photo_corpus:
        return None
    folder = Path(settings.photo_corpus).expanduser()
    return str(folder) if (folder / PHOTOS_FOLDER).is_dir() or (folder / CORPUS_MANIFEST).is_file() else None


def open_photos(url: str, storages: StorageFactory) -> PhotoListing:
    """A photo folder: ``url`` itself, or its ``photos/`` when it is a corpus root with a manifest.

    Raises:
        ConfigError: no photo file in it.
    """
    root = storages.open(url)
    if root.exists(CORPUS_MANIFEST) and has_prefix(root, PHOTOS_FOLDER):
        return list_photos(storages.open(f"{url.rstrip('/')}/{PHOTOS_FOLDER}"), url, (root, CORPUS_MANIFEST))
    parent, _ = split_location(url)
    return list_photos(root, url, (storages.open(parent), CORPUS_MANIFEST))
