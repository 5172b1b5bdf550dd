"""From what the user chose on the command line to the run's :class:`PipelineSpec`.

Presets that use a calibration find ``calibration.json`` next to the dataset. ``learned`` (the
default) runs, in this order: the model named with ``--weights``, the dataset's own fine-tuned model
(``trained_x4.safetensors``), or the project's shipped model (``SHIPPED_MODEL``, checked against
the registry's hash); it copies the model into the run store under its hash, where every worker
fetches it.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from dataclasses import dataclass

from workers.errors import ConfigError, ObjectNotFoundError, UnsupportedModelError
from workers.io.models import load_registry, models_folder
from workers.io.storage import LocalStorage, Storage, StorageFactory, join_key, split_location
from workers.io.weights import CHECKPOINTS_FOLDER
from workers.ops.denoise import DenoiseSpec
from workers.ops.upscalers import upscaler_kind
from workers.run.manifest import DenoisePlacement, PipelineSpec
from workers.run.presets import NEEDS_CALIBRATION, Checkpoint, PresetInputs, build_pipeline
from workers.training.artifacts import TRAINED_FILE, TrainingOutput, default_output, sha256_hex
from workers.training.calibrate import Calibration, default_location, load_calibration

DEFAULT_PRESET = "learned"
# run store: checkpoints/<sha256>.safetensors, shared by every run that uses it (not "models/": with the
# default STORAGE_URL "." the store is the repository, whose models/ holds the shipped models)
MODELS_PREFIX = CHECKPOINTS_FOLDER


@dataclass(frozen=True)
class PipelineChoice:
    """What the user asked for on the command line, before calibration and models are looked up."""

    preset: str | None  # None: DEFAULT_PRESET
    denoise: DenoiseSpec
    calibration: str | None = None  # artifact path or URL
    denoise_on: DenoisePlacement = "cpu"  # "gpu": NL-means fused into the GPU task
    tta: bool = False
    checkpoint: str | None = None  # a trained model to run instead of DATASET/trained_x4.safetensors
    dataset_model: bool = True  # False: learned runs the shipped model even where the dataset has its own
    denoise_given: bool = False  # the denoiser was named on the command line or in the environment


@dataclass(frozen=True)
class Resolved:
    pipeline: PipelineSpec
    note: str = ""  # what was chosen for the user, for the command's first line


def resolve_pipeline(choice: PipelineChoice, dataset: str | None, storages: StorageFactory,
                     run_store: Storage | None = None) -> Resolved:
    """The run's pipeline, with its calibration and model looked up.

    Raises:
        ConfigError: the preset lacks what it needs (the message says which command makes it),
            an artifact is unreadable, or a model file is missing.
    """
    preset = choice.preset or DEFAULT_PRESET
    calibration = _calibration(choice, preset, dataset, storages)
    checkpoint, note = None, ""
    if preset == "learned":
        model, note = _learned_model(choice, dataset, storages)
        checkpoint = publish_checkpoint(model, run_store or storages.open("."))
    elif choice.checkpoint and upscaler_kind(build_pipeline(preset, _probe(choice, calibration)).upscaler).runs_checkpoint:
        model = _named_checkpoint(choice.checkpoint, storages)
        checkpoint = publish_checkpoint(model, run_store or storages.open("."))
        note = f"model {model.url()} (--weights / WEIGHTS)"
    elif choice.checkpoint:
        note = f"--weights / WEIGHTS ignored: preset {preset} runs no model"
    inputs = PresetInputs(denoise=choice.denoise, calibration=calibration, checkpoint=checkpoint, tta=choice.tta,
                          denoise_given=choice.denoise_given)
    pipeline = dataclasses.replace(build_pipeline(preset, inputs), denoise_on=choice.denoise_on)
    return Resolved(pipeline, note)


def _calibration(choice: PipelineChoice, preset: str, dataset: str | None, storages: StorageFactory) -> Calibration | None:
    """An explicit artifact always; for presets that need one, the dataset's own when it exists."""
    location = choice.calibration
    if location is None and preset in NEEDS_CALIBRATION and dataset is not None:
        candidate = default_location(dataset)
        folder, name = split_location(candidate)
        if storages.open(folder).exists(name):
            location = candidate
    return load_calibration(location, storages) if location else None


def _learned_model(choice: PipelineChoice, dataset: str | None, storages: StorageFactory) -> tuple[TrainingOutput, str]:
    """The model ``learned`` runs and a line saying which: --weights, else the dataset's, else the shipped one.

    Raises:
        ConfigError: the --weights file is missing; the shipped model is missing or fails its hash check.
    """
    if choice.checkpoint:
        output = _named_checkpoint(choice.checkpoint, storages)
        return output, f"model {output.url()} (--weights / WEIGHTS)"
    if dataset is not None and choice.dataset_model:
        output = TrainingOutput.at(default_output(dataset), storages)
        if output.storage.exists(TRAINED_FILE):
            return output, f"model {output.url()}, this dataset's own (producer train)"
    settings = storages.settings
    registry = load_registry(models_folder(settings.models_dir))
    name = settings.shipped_model or registry.default
    path = registry.path(name)
    entry = registry.entry(name)
    return TrainingOutput(LocalStorage(path.parent), path.name), (
        f"shipped model {name} ({entry.architecture}, {path}); `producer train DATASET` fine-tunes it")


def _probe(choice: PipelineChoice, calibration: Calibration | None) -> PresetInputs:
    """What the preset is built from before its model is known: enough to learn its upscaler."""
    return PresetInputs(denoise=choice.denoise, calibration=calibration, denoise_given=choice.denoise_given)


def _named_checkpoint(location: str, storages: StorageFactory) -> TrainingOutput:
    """The checkpoint the user named: any file spandrel loads as a 4x RGB model (a .pth too), checked
    to load before anything is copied or registered.

    Raises:
        ConfigError: no file there; UnsupportedModelError: it is not such a model.
    """
    folder, name = split_location(location)
    output = TrainingOutput(storages.open(folder), name)
    if not output.storage.exists(output.name):
        raise ConfigError(f"no model file at {location} (--weights / WEIGHTS)")
    check_loads(output, location)
    return output


def check_loads(model: TrainingOutput, given: str) -> None:
    """Load the user's model file once, before anything is copied, cached or registered for a run, so
    that a file that is no model is reported by the name the user gave, and leaves nothing behind.

    Raises:
        UnsupportedModelError: it is not a 3-channel 4x model spandrel loads.
    """
    from workers.ops.upscale import load_descriptor

    suffix = "." + model.name.rsplit(".", 1)[-1] if "." in model.name else ""
    with tempfile.NamedTemporaryFile(suffix=suffix) as copy:
        copy.write(model.storage.get(model.name))
        copy.flush()
        try:
            load_descriptor(copy.name)
        except UnsupportedModelError as exc:
            raise UnsupportedModelError(f"{given}: {str(exc).removeprefix(copy.name + ': ')} (--weights / WEIGHTS)") from None


def publish_checkpoint(trained: TrainingOutput, run_store: Storage) -> Checkpoint:
    """Copy the model (and its provenance) into the run store under its sha256, once; return its key.

    Raises:
        ConfigError: the model file vanished meanwhile.
    """
    try:
        data = trained.storage.get(trained.name)
    except ObjectNotFoundError:
        raise ConfigError(f"no trained model at {trained.url()}") from None
    digest = sha256_hex(data)
    suffix = "." + trained.name.rsplit(".", 1)[-1]
    key = join_key(MODELS_PREFIX, digest + suffix)
    if not run_store.exists(key):
        run_store.put(key, data)
    provenance = trained.read_provenance()
    if provenance is not None and not run_store.exists(provenance_key(digest)):
        run_store.put(provenance_key(digest), json.dumps(provenance, indent=1).encode())
    return Checkpoint(key, digest)


def provenance_key(sha256: str) -> str:
    """Where the run store keeps a published model's training provenance (for the report's curve)."""
    return join_key(MODELS_PREFIX, f"{sha256}.json")
