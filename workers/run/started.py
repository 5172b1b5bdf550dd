"""When a run was last enqueued: ``runs/<run>/started.json``, written by the producer as it prepares
the run, read by the report, which counts the run's wall time and throughput from it.

Every enqueue replaces it, so it describes the latest: a resumed run is timed from its resumption,
and the images finished before it are counted apart.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime

from workers.errors import ConfigError, ObjectNotFoundError
from workers.io.storage import Storage
from workers.run.keys import RunKeys

START_VERSION = 1


@dataclass(frozen=True)
class RunStart:
    """One enqueue of a run: when it began, how many images it found left to do and how many finished."""

    at: str  # ISO 8601 with its UTC offset, to the millisecond: when the producer began preparing the run
    remaining: int  # images this enqueue left for the stages
    finished: int  # images already done or failed when it began
    version: int = START_VERSION

    def __post_init__(self) -> None:
        datetime.fromisoformat(self.at)  # raises ValueError for a time it cannot read

    @property
    def timestamp(self) -> float:
        """``at`` in seconds since the epoch."""
        return datetime.fromisoformat(self.at).timestamp()

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> RunStart:
        """Parse what :meth:`to_json` wrote.

        Raises:
            ConfigError: not a start record this code reads.
        """
        try:
            data = json.loads(raw)
            start = cls(
                at=str(data["at"]),
                remaining=int(data["remaining"]),
                finished=int(data["finished"]),
                version=int(data["version"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"run start record is malformed: {exc}") from None
        if start.version != START_VERSION:
            raise ConfigError(f"run start record version {start.version} is not {START_VERSION}")
        return start


def record_start(storage: Storage, run_id: str, start: RunStart) -> None:
    """Store ``start`` as the run's latest enqueue (replacing the one before).

    Raises:
        TransientError: the store could not be reached.
    """
    storage.put(RunKeys(run_id).started, start.to_json())


def read_start(storage: Storage, run_id: str) -> RunStart | None:
    """The run's latest enqueue, or None for a run that recorded none (one made before runs did, or
    whose record is unreadable: the report then falls back on the images' own times).

    Raises:
        TransientError: the store could not be reached.
    """
    try:
        return RunStart.from_json(storage.get(RunKeys(run_id).started))
    except (ObjectNotFoundError, ConfigError):
        return None
