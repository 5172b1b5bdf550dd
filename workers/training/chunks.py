"""A distributed training job as a chain of time-boxed chunks: each ``train`` task trains for at most
TRAIN_CHUNK_S, saves its state and sends the next chunk's message. The job's marker, stored next to
its checkpoint, drives the chain (which chunk runs, who holds it, its heartbeat, whether it is done
or failed), so a message delivered twice neither trains twice nor ends the chain."""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from workers.errors import ConfigError, ObjectNotFoundError
from workers.io.storage import Storage, StorageFactory
from workers.settings import Settings
from workers.training.artifacts import TrainingOutput
from workers.training.config import TrainConfig
from workers.training.job import TrainJob
from workers.training.setup import make_trainer

logger = logging.getLogger(__name__)


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


def next_step(
    marker: JobMarker | None, job: TrainJob, task_id: str, holder_alive: bool | None, redelivered: bool = False
) -> Step:
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


def train_chunk(
    job: TrainJob,
    task_id: str,
    settings: Settings,
    storages: StorageFactory,
    holder: dict[str, Any],
    holder_alive: Callable[[dict[str, Any]], bool],
    redelivered: bool = False,
) -> ChunkOutcome:
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
        logger.warning(
            "training message %s for %s: %s (marker %s): dropped", task_id, job.output_location(), step, marker
        )
        return ChunkOutcome(step)
    if step == "resend" and current is not None:
        return ChunkOutcome("resend", next_task=current.next)
    deaths = current.deaths if current is not None else 0
    chunk = 0 if current is None else current.chunk + (step == "run")
    if step == "died" and current is not None:
        deaths += 1
        node = (current.holder or {}).get("node", "?")
        logger.warning(
            "training chunk %d of %s: worker %s died running it (%d of %d deaths)",
            chunk,
            job.output_location(),
            node,
            deaths,
            settings.max_worker_deaths,
        )
        if deaths >= settings.max_worker_deaths:
            error = f"worker died {deaths} times while training; last {node}, chunk {chunk}"
            write_marker(
                job, storages, dataclasses.replace(current, holder=None, deaths=deaths, failed=True, error=error)
            )
            return ChunkOutcome("failed")
    state = JobMarker(
        job.started_at,
        chunk,
        task_id,
        holder=holder,
        heartbeat=time.time(),
        deaths=deaths,
        errors=current.errors if current is not None and step != "run" else 0,
    )
    write_marker(job, storages, state)
    config = TrainConfig(**job.config)
    trainer = make_trainer(
        job.dataset,
        job.output,
        job.start,
        config,
        settings,
        storages,
        restart=job.restart and chunk == 0,
        photos_url=job.photos,
    )
    chunk_end = time.monotonic() + settings.train_chunk_s
    spent = max(0.0, time.time() - job.started_at) if job.started_at else 0.0
    beat = _heartbeat(job, storages, state, settings.heartbeat_every_s)
    result = trainer.run(
        on_progress=lambda _: beat(), should_stop=lambda: time.monotonic() >= chunk_end, budget_spent_s=spent
    )
    over_budget = bool(config.minutes) and time.time() - job.started_at >= 60 * (config.minutes or 0)
    done = result.finished or over_budget
    next_task = None if done else secrets.token_hex(16)
    write_marker(
        job,
        storages,
        dataclasses.replace(
            state,
            complete=True,
            done=done,
            holder=None,
            next=next_task,
            heartbeat=time.time(),
            steps=result.steps,
            best_psnr=result.best_psnr,
        ),
    )
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
    write_marker(
        job, storages, dataclasses.replace(marker, holder=None, errors=marker.errors + 1, error=error, failed=final)
    )
