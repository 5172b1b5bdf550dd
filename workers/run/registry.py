"""Runs in progress, registered in the run store (``active/<run>.json``) so that the recovery sweep
finds them even when Redis has forgotten everything: storage is the source of truth."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import PurePosixPath

from workers.io.storage import Storage, join_key
from workers.run.keys import check_run_id

ACTIVE_PREFIX = "active"


def active_key(run_id: str) -> str:
    return join_key(ACTIVE_PREFIX, f"{check_run_id(run_id)}.json")


def register(storage: Storage, run_id: str, total: int) -> None:
    """Mark the run in progress (the producer does when it enqueues work; idempotent)."""
    storage.put(active_key(run_id), json.dumps({"run_id": run_id, "total": total, "registered_at": time.time()}).encode())


def unregister(storage: Storage, run_id: str) -> None:
    """The run is complete (its aggregation wrote the summary): the sweep leaves it alone."""
    storage.delete(active_key(run_id))


def registered_at(storage: Storage, run_id: str) -> float:
    """When the run was registered (0 when the record is unreadable or gone)."""
    try:
        return float(json.loads(storage.get(active_key(run_id)))["registered_at"])
    except (KeyError, ValueError, TypeError, LookupError):
        return 0.0


def active_runs(storage: Storage) -> Iterator[str]:
    """The ids of the registered runs (one listing)."""
    for key in storage.list(ACTIVE_PREFIX):
        name = PurePosixPath(key).name
        if name.endswith(".json"):
            yield name.removesuffix(".json")
