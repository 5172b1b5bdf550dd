"""One training job from names to a trained model: the dataset, its calibration, the start checkpoint
and the output, then :class:`~workers.training.finetune.Trainer`. ``producer train`` runs it in
process; the ``train`` task runs it on a GPU worker in time-boxed chunks."""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from workers.errors import ConfigError, ObjectNotFoundError
from workers.io.models import load_registry, models_folder
from workers.io.storage import Storage, StorageFactory, split_location
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
from workers.training.artifacts import TRAINED_FILE, TrainingOutput, default_output
from workers.training.calibrate import (
    CALIBRATION_FILE,
    Calibration,
    calibrate,
    default_location,
    load_calibration,
    open_dataset,
)
from workers.training.config import TrainConfig, TrainProgress, TrainResult
from workers.training.data import TrainingData
from workers.training.destinations import SHIPPED_PREFIX, check_task_dataset, check_task_output, check_task_start
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


def make_trainer(dataset_url: str | None, output_url: str | None, start_ref: str | None, config: TrainConfig,
                 settings: Settings, storages: StorageFactory, restart: bool = False,
                 note: Callable[[str], None] = logger.info, photos_url: str | None = None) -> Trainer:
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
        note("inputs are darker than their targets: training on the real inputs only (no fresh degradations, "
             "no photos)")
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


def training_data(dataset_url: str | None, photos_url: str | None, storages: StorageFactory,
                  note: Callable[[str], None]) -> TrainingData:
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
            note("the calibration predates target brightness: photos are darkened to the competition's "
                 "(re-run `producer calibrate` to measure this dataset's)")
        summary = {"forward_model": forward.to_dict(), "tone_applies": calibration.tone_applies,
                   "created_at": calibration.created_at}
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


def run_training(dataset_url: str | None, output_url: str | None, start_ref: str | None, config: TrainConfig,
                 settings: Settings, storages: StorageFactory, restart: bool = False,
                 on_progress: Callable[[TrainProgress], None] | None = None,
                 should_stop: Callable[[], bool] | None = None,
                 note: Callable[[str], None] = logger.info, photos_url: str | None = None) -> TrainResult:
    """Train and return what happened (see :meth:`Trainer.run`)."""
    trainer = make_trainer(dataset_url, output_url, start_ref, config, settings, storages, restart, note, photos_url)
    return trainer.run(on_progress, should_stop)


@dataclass(frozen=True)
class TrainJob:
    """A distributed training job, as the ``train`` task's message carries it (JSON, no pixels)."""

    dataset: str
    output: str | None = None
    start: str | None = None
    config: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields
    restart: bool = False
    started_at: float = 0.0  # epoch seconds when the producer enqueued it: the --minutes budget counts from here
    chunk: int = 0
    photos: str | None = None  # a photo folder to learn from too (default: the dataset's photos/)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainJob:
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"malformed training job: {exc}") from None

    def output_location(self) -> str:
        return self.output or default_output(self.dataset)

    def checked(self, settings: Settings | None = None) -> TrainJob:
        """This job, if a task may run it (:mod:`workers.training.destinations`): its dataset inside
        the run store, its checkpoint (and the companions beside it) the dataset's
        ``trained_x4.safetensors`` or allow-listed, the dataset's ``calibration.json`` (made when
        missing), and a start a task may use. ``settings``: this process's, by default.

        Raises:
            ConfigError: something it would read or write is not allowed.
        """
        settings = settings or Settings.from_env()
        check_task_dataset(self.dataset, settings)
        check_task_output(self.output_location(), self.dataset, TRAINED_FILE, settings)
        check_task_output(default_location(self.dataset), self.dataset, CALIBRATION_FILE, settings)
        check_task_start(self.start, settings)
        return self


@dataclass(frozen=True)
class ChunkOutcome:
    """What a ``train`` message did: ``continue`` (a chunk ran; send ``next_task``), ``done``,
    ``resend`` (a finished chunk ran again: send ``next_task`` once more, it may be missing),
    ``failed`` (the job is over, see the marker's error), ``duplicate`` or ``held`` (dropped: another
    job's, an old one, or the chunk a live worker is running)."""

    status: Literal["continue", "done", "resend", "failed", "duplicate", "held"]
    steps: int = 0
    best_psnr: float | None = None
    next_task: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


MARKER_VERSION = 1


@dataclass(frozen=True)
class JobMarker:
    """A training job's stored state (``<output>.job.json``), which drives its chain of chunks: the
    chunk that runs or last ran, the message that runs it and the one that runs the next, who holds
    it and when it last beat, deaths, errors, and whether the job is over (``done``, or ``failed``
    with the ``error``)."""

    job: float  # the job's started_at: which job of this output the state is of
    chunk: int = 0
    task: str = ""  # the message running (or that ran) the chunk
    complete: bool = False  # the chunk finished; ``next`` runs the following one
    done: bool = False
    failed: bool = False
    holder: dict[str, Any] | None = None  # the worker process running it (liveness.Holder's fields)
    heartbeat: float = 0.0
    deaths: int = 0
    errors: int = 0
    next: str | None = None
    steps: int = 0
    best_psnr: float | None = None
    error: str = ""
    version: int = MARKER_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobMarker:
        """A stored marker; a field this version does not know is ignored (a newer writer's).

        Raises:
            ConfigError: not a marker (no ``job``), or of a newer version.
        """
        if not isinstance(data, dict) or "job" not in data:
            raise ConfigError(f"not a training job marker: {str(data)[:80]!r}")
        if int(data.get("version", MARKER_VERSION)) > MARKER_VERSION:
            raise ConfigError(f"training job marker version {data['version']} is newer than {MARKER_VERSION}")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def job_marker(job: TrainJob, storages: StorageFactory) -> tuple[Storage, str]:
    """Where a job records its :class:`JobMarker`: ``<output>.job.json``."""
    output = TrainingOutput.at(job.output_location(), storages)
    return output.storage, output.name + ".job.json"


def read_marker(job: TrainJob, storages: StorageFactory) -> JobMarker | None:
    storage, key = job_marker(job, storages)
    try:
        return JobMarker.from_dict(json.loads(storage.get(key)))
    except ObjectNotFoundError:
        return None


def write_marker(job: TrainJob, storages: StorageFactory, marker: JobMarker) -> None:
    storage, key = job_marker(job, storages)
    storage.put(key, json.dumps(marker.to_dict()).encode())


Step = Literal["run", "resume", "resend", "duplicate", "held", "died"]


def next_step(marker: JobMarker | None, job: TrainJob, task_id: str, holder_alive: bool | None,
              redelivered: bool = False) -> Step:
    """What a ``train`` message must do, from the job's stored state alone (the chain is driven by it):

    * a new job's first message runs chunk 0; a message of an older job is a duplicate;
    * a job that is over (done, failed) drops every message;
    * after a chunk completed, the message the marker names as ``next`` runs the next chunk, and
      the message of the completed chunk, ``redelivered`` (its publish of the next failed and it
      was retried, or its worker died before the acknowledgement), sends ``next`` once more: the
      next message has that same task id, so if both exist one of them is a duplicate. A plain
      copy of it (sent twice) is a duplicate: it must not multiply the chain;
    * while a chunk runs, its own message delivered again is dropped while its holder is alive
      (``holder_alive``), and resumes it as a death of the holder otherwise.
    """
    if marker is None or marker.job != job.started_at:
        newer = marker is None or job.started_at > marker.job
        return "run" if job.chunk == 0 and newer else "duplicate"
    if marker.done or marker.failed:
        return "duplicate"
    if marker.complete:
        if task_id == marker.next:
            return "run"
        return "resend" if task_id == marker.task and redelivered else "duplicate"
    if task_id != marker.task:
        return "duplicate"
    if marker.holder is None:
        return "resume"  # it stopped on an error and is retried
    return "held" if holder_alive else "died"


def train_chunk(job: TrainJob, task_id: str, settings: Settings, storages: StorageFactory, holder: dict[str, Any],
                holder_alive: Callable[[dict[str, Any]], bool], redelivered: bool = False) -> ChunkOutcome:
    """Run the chunk of ``job`` that the stored state says is next (at most TRAIN_CHUNK_S), resuming
    from the saved training state (see :func:`next_step`). ``holder`` is this process's identity,
    stored while the chunk runs; ``holder_alive`` tells whether another one still runs.

    A chunk whose worker died is resumed as a death; after MAX_WORKER_DEATHS the job is failed.
    The caller sends ``next_task`` (with that task id) for ``continue`` and ``resend``.
    """
    marker = read_marker(job, storages)
    current = marker if marker is not None and marker.job == job.started_at else None
    running = current is not None and not current.complete and current.holder is not None
    alive = holder_alive(current.holder) if running and current is not None and current.holder else None
    step = next_step(marker, job, task_id, alive, redelivered)
    if step in ("duplicate", "held"):
        logger.warning("training message %s for %s: %s (marker %s): dropped", task_id, job.output_location(), step, marker)
        return ChunkOutcome(step)
    if step == "resend" and current is not None:
        return ChunkOutcome("resend", next_task=current.next)
    deaths = current.deaths if current is not None else 0
    chunk = 0 if current is None else current.chunk + (step == "run")
    if step == "died" and current is not None:
        deaths += 1
        node = (current.holder or {}).get("node", "?")
        logger.warning("training chunk %d of %s: worker %s died running it (%d of %d deaths)", chunk,
                       job.output_location(), node, deaths, settings.max_worker_deaths)
        if deaths >= settings.max_worker_deaths:
            error = f"worker died {deaths} times while training; last {node}, chunk {chunk}"
            write_marker(job, storages, dataclasses.replace(current, holder=None, deaths=deaths, failed=True,
                                                            error=error))
            return ChunkOutcome("failed")
    state = JobMarker(job.started_at, chunk, task_id, holder=holder, heartbeat=time.time(), deaths=deaths,
                      errors=current.errors if current is not None and step != "run" else 0)
    write_marker(job, storages, state)
    config = TrainConfig(**job.config)
    trainer = make_trainer(job.dataset, job.output, job.start, config, settings, storages,
                           restart=job.restart and chunk == 0, photos_url=job.photos)
    chunk_end = time.monotonic() + settings.train_chunk_s
    spent = max(0.0, time.time() - job.started_at) if job.started_at else 0.0
    beat = _heartbeat(job, storages, state, settings.heartbeat_every_s)
    result = trainer.run(on_progress=lambda _: beat(), should_stop=lambda: time.monotonic() >= chunk_end,
                         budget_spent_s=spent)
    over_budget = bool(config.minutes) and time.time() - job.started_at >= 60 * (config.minutes or 0)
    done = result.finished or over_budget
    next_task = None if done else secrets.token_hex(16)
    write_marker(job, storages, dataclasses.replace(state, complete=True, done=done, holder=None, next=next_task,
                                                    heartbeat=time.time(), steps=result.steps,
                                                    best_psnr=result.best_psnr))
    return ChunkOutcome("done" if done else "continue", result.steps, result.best_psnr, next_task)


def _heartbeat(job: TrainJob, storages: StorageFactory, state: JobMarker, every_s: float) -> Callable[[], None]:
    """A progress callback that restamps the marker's heartbeat at most every ``every_s``: the
    producer following the job tells a slow chunk from a dead one by it."""
    last = [time.monotonic()]

    def beat() -> None:
        if time.monotonic() - last[0] >= every_s:
            last[0] = time.monotonic()
            try:
                write_marker(job, storages, dataclasses.replace(state, heartbeat=time.time()))
            except Exception:  # a missed beat is not worth a chunk
                logger.warning("could not restamp the training heartbeat", exc_info=True)

    return beat


def chunk_failed(job: TrainJob, task_id: str, storages: StorageFactory, error: str, final: bool) -> None:
    """Record that the chunk of message ``task_id`` stopped on ``error``: retried later (its holder is
    cleared, so the retry resumes it wherever it lands), or the job is over when ``final``."""
    marker = read_marker(job, storages)
    if marker is None or marker.job != job.started_at:
        marker = JobMarker(job.started_at, job.chunk, task_id)
    if marker.task != task_id or marker.complete:
        return  # not this message's chunk: nothing of the job's state to change
    write_marker(job, storages, dataclasses.replace(marker, holder=None, errors=marker.errors + 1, error=error,
                                                    failed=final))
