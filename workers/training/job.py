"""One training job from names to a trained model: the dataset, its calibration, the start checkpoint
and the output, then :class:`~workers.training.finetune.Trainer`. ``producer train`` runs it in
process; the ``train`` task runs it on a GPU worker in time-boxed chunks."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from workers.errors import ConfigError, ObjectNotFoundError
from workers.io.storage import Storage, StorageFactory, split_location
from workers.io.weights import resolve_checkpoint
from workers.ops.degrade import ForwardModel
from workers.settings import DEFAULT_TRAIN_FROM, Settings
from workers.training.artifacts import TrainingOutput, default_output
from workers.training.calibrate import Calibration, calibrate, default_location, load_calibration, open_dataset
from workers.training.config import TrainConfig, TrainProgress, TrainResult
from workers.training.destinations import check_task_output

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


def make_trainer(dataset_url: str, output_url: str | None, start_ref: str | None, config: TrainConfig,
                 settings: Settings, storages: StorageFactory, restart: bool = False,
                 note: Callable[[str], None] = logger.info) -> Trainer:
    """Everything resolved and loaded, ready to :meth:`~Trainer.run`.

    Raises:
        ConfigError: the dataset is a val/ or test/ split or has no usable pair; the start
            checkpoint is missing, not a 4x RGB model, or cannot be downloaded; a saved state is corrupt.
    """
    dataset, label = open_dataset(dataset_url, storages)
    output = TrainingOutput.at(output_url or default_output(dataset_url), storages)
    calibration = dataset_calibration(dataset_url, storages, note)
    forward = calibration.forward.model if calibration.forward else ForwardModel()
    if calibration.tone_applies and config.fresh_share > 0:
        # Fresh inputs come from the forward model, which has no tone change: on darkened pairs they
        # would teach the model the wrong brightness. Train on the real inputs only.
        note("inputs are darker than their targets: training on the real inputs only (no fresh degradations)")
        config = dataclasses.replace(config, fresh_share=0.0)
    from workers.training.finetune import Trainer  # torch: only where training runs

    start = resolve_checkpoint(start_ref or DEFAULT_TRAIN_FROM, settings)
    summary = {"forward_model": forward.to_dict(), "tone_applies": calibration.tone_applies,
               "created_at": calibration.created_at}
    return Trainer(dataset, output, start.path, start.source, forward, config, settings.device, settings.precision,
                   summary, label, restart)


def run_training(dataset_url: str, output_url: str | None, start_ref: str | None, config: TrainConfig,
                 settings: Settings, storages: StorageFactory, restart: bool = False,
                 on_progress: Callable[[TrainProgress], None] | None = None,
                 should_stop: Callable[[], bool] | None = None,
                 note: Callable[[str], None] = logger.info) -> TrainResult:
    """Train and return what happened (see :meth:`Trainer.run`)."""
    trainer = make_trainer(dataset_url, output_url, start_ref, config, settings, storages, restart, note)
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

    def checked(self) -> TrainJob:
        """This job, if what it writes is allowed to a task: the checkpoint (and its companions beside
        it) a ``.safetensors`` outside run state, and the dataset's ``calibration.json`` (made when
        missing) outside run state too (:func:`check_task_output`).

        Raises:
            ConfigError: a destination is not allowed.
        """
        check_task_output(self.output_location(), self.dataset, ".safetensors")
        check_task_output(default_location(self.dataset), self.dataset, ".json")
        return self


@dataclass(frozen=True)
class ChunkOutcome:
    status: Literal["continue", "done", "duplicate"]
    steps: int = 0
    best_psnr: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def job_marker(job: TrainJob, storages: StorageFactory) -> tuple[Storage, str]:
    """Where a job records which chunk last ran and whether the job is over (``<output>.job.json``)."""
    output = TrainingOutput.at(job.output_location(), storages)
    return output.storage, output.name + ".job.json"


def read_marker(job: TrainJob, storages: StorageFactory) -> dict[str, Any] | None:
    storage, key = job_marker(job, storages)
    try:
        return json.loads(storage.get(key))
    except ObjectNotFoundError:
        return None


def train_chunk(job: TrainJob, settings: Settings, storages: StorageFactory) -> ChunkOutcome:
    """Run one time-boxed chunk of ``job`` (at most TRAIN_CHUNK_S), resuming from the saved state.

    A chunk runs only if the marker says the previous chunk of the same job completed, or this very
    chunk started and died (a redelivery); a new job (another ``started_at``) starts at chunk 0.
    Anything else is a duplicate message, dropped. The caller enqueues the next chunk when the
    outcome says ``continue``.
    """
    storage, key = job_marker(job, storages)
    marker = read_marker(job, storages) or {}
    if marker.get("job") != job.started_at:
        allowed = job.chunk == 0
    else:
        follows = marker["chunk"] == job.chunk - 1 and marker["complete"] and not marker["done"]
        allowed = follows or (marker["chunk"] == job.chunk and not marker["complete"])
    if not allowed:
        logger.warning("training chunk %d of %s is a duplicate (marker %s): dropped", job.chunk, key, marker)
        return ChunkOutcome("duplicate")
    storage.put(key, json.dumps({"job": job.started_at, "chunk": job.chunk, "complete": False, "done": False}).encode())
    config = TrainConfig(**job.config)
    trainer = make_trainer(job.dataset, job.output, job.start, config, settings, storages,
                           restart=job.restart and job.chunk == 0)
    chunk_end = time.monotonic() + settings.train_chunk_s
    spent = max(0.0, time.time() - job.started_at) if job.started_at else 0.0
    result = trainer.run(should_stop=lambda: time.monotonic() >= chunk_end, budget_spent_s=spent)
    over_budget = bool(config.minutes) and time.time() - job.started_at >= 60 * config.minutes
    done = result.finished or over_budget
    storage.put(key, json.dumps({"job": job.started_at, "chunk": job.chunk, "complete": True, "done": done,
                                 "steps": result.steps, "best_psnr": result.best_psnr}).encode())
    return ChunkOutcome("done" if done else "continue", result.steps, result.best_psnr)
