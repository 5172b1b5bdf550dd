"""What went wrong for one image at one stage: how often its worker died while processing it, how
often an unexpected error stopped it, and whether it must now run in a forward pass of its own.

A delivery that finds its image started by a worker process that is gone counts a death; after
MAX_WORKER_DEATHS the next delivery records the image as failed (the poison-pill rule of SQS's
maxReceiveCount and RabbitMQ's delivery-limit), so one input can never crash-loop a pool. An
unexpected error counts the same way against TASK_MAX_ERRORS.

Kept in the run store (``attempts/<stem>.<stage>.json``), the source of truth, and written only
when something went wrong: a healthy image never pays a storage call for it. The Redis tracker
caches these records so a delivery reads its image's record in the round trip that claims it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import PurePosixPath
from typing import Any

from workers.errors import ConfigError, ObjectNotFoundError
from workers.io.storage import Storage
from workers.run.keys import META_STAGES, RunKeys
from workers.run.manifest import now_iso

WORKER_DEATHS = "worker-deaths"  # the kind of failure record of an image its workers kept dying on
ATTEMPTS_VERSION = 1


@dataclass(frozen=True)
class Attempts:
    """The troubled history of one image at one stage (all zero for a healthy image)."""

    name: str
    stage: str
    deaths: int = 0  # deliveries whose worker process died while it was computing this image
    errors: int = 0  # deliveries that ended in an unexpected error (not a transient one)
    # It died or failed in a forward pass with other images: from now on it runs alone, so that
    # its batch-mates finish on their next delivery and only the culprit accumulates deaths.
    alone: bool = False
    last_worker: str = ""  # the worker of the last death or error, e.g. "gpu@host-2"
    last_error: str = ""  # "ValueError: ..." of the last unexpected error
    at: str = ""
    version: int = ATTEMPTS_VERSION

    @property
    def suspect(self) -> bool:
        """Something went wrong with it before: it runs alone, after the images nothing went wrong with."""
        return self.alone or self.deaths > 0

    def with_death(self, worker: str, batch: int) -> Attempts:
        """One more death, of ``worker`` computing this image in a forward pass of ``batch`` images."""
        return replace(self, deaths=self.deaths + 1, alone=self.alone or batch > 1, last_worker=worker, at=now_iso())

    def with_error(self, error: BaseException, worker: str, batch: int) -> Attempts:
        """One more unexpected error, raised by ``worker`` for a group of ``batch`` images."""
        return replace(self, errors=self.errors + 1, alone=self.alone or batch > 1, last_worker=worker,
                       last_error=describe_error(error), at=now_iso())

    def death_reason(self) -> str:
        """The failure reason once deaths reached the limit: what happened, and where last."""
        return f"worker died {self.deaths} times while processing it; last {self.last_worker}, {self.stage}"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Attempts:
        """A stored record; records written before the version field read as version 1, and a field
        this version does not know is ignored.

        Raises:
            ConfigError: a newer version.
        """
        if int(data.get("version", ATTEMPTS_VERSION)) > ATTEMPTS_VERSION:
            raise ConfigError(f"attempts record version {data['version']} is newer than {ATTEMPTS_VERSION}")
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str | bytes) -> Attempts:
        return cls.from_dict(json.loads(text))


def describe_error(error: BaseException) -> str:
    """``Type: message``, one line, for failure records and logs (``cv2.error`` keeps its module)."""
    kind = type(error)
    name = kind.__name__ if kind.__module__ in {"builtins", "workers.errors"} else f"{kind.__module__}.{kind.__name__}"
    message = " ".join(str(error).split())
    return f"{name}: {message}" if message else name


def read_attempts(storage: Storage, run_id: str, name: str, stage: str) -> Attempts:
    try:
        return Attempts.from_json(storage.get(RunKeys(run_id).attempts(name, stage)))
    except ObjectNotFoundError:
        return Attempts(name, stage)


def write_attempts(storage: Storage, run_id: str, attempts: Attempts) -> None:
    storage.put(RunKeys(run_id).attempts(attempts.name, attempts.stage), attempts.to_json().encode())


def count_error(storage: Storage, run_id: str, name: str, stage: str, error: BaseException, worker: str,
                batch: int = 1) -> Attempts:
    """One more unexpected error of the image at ``stage``, in its stored record; the record after it.

    Raises:
        TransientError: storage could not be reached (the error is not counted).
        ConfigError: storage refuses the write (full, access denied).
    """
    attempts = read_attempts(storage, run_id, name, stage).with_error(error, worker, batch)
    write_attempts(storage, run_id, attempts)
    return attempts


def stored_attempts(storage: Storage, run_id: str) -> Iterator[Attempts]:
    """Every record of the run (one listing; records exist only where something went wrong)."""
    for key in storage.list(RunKeys(run_id).prefix("attempts")):
        if PurePosixPath(key).suffix == ".json":
            try:
                yield Attempts.from_json(storage.get(key))
            except ObjectNotFoundError:  # deleted since the listing
                continue


def forget_attempts(storage: Storage, run_id: str, name: str) -> None:
    """Start the image's counts afresh (``--retry-failed``, or its input changed)."""
    keys = RunKeys(run_id)
    for stage in META_STAGES:
        storage.delete(keys.attempts(name, stage))
