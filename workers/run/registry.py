"""Runs in progress, registered in the run store (``active/<run>.json``) so that the recovery sweep
finds them even when Redis has forgotten everything: storage is the source of truth.

A cancel is recorded in the registration too (Redis only caches it): a run cancelled before Redis
restarted without persistence, or before its Redis key expired, stays cancelled; only ``producer
enqueue --resume-cancelled`` registers it afresh."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import Any

from workers.errors import ObjectNotFoundError
from workers.io.storage import Storage, join_key
from workers.run.keys import check_run_id

ACTIVE_PREFIX = "active"


def active_key(run_id: str) -> str:
    return join_key(ACTIVE_PREFIX, f"{check_run_id(run_id)}.json")


def register(storage: Storage, run_id: str, total: int) -> None:
    """Mark the run in progress (the producer does when it enqueues work; idempotent). A cancelled
    run registered again is resumed."""
    storage.put(active_key(run_id), json.dumps({"run_id": run_id, "total": total, "registered_at": time.time()}).encode())


def registration(storage: Storage, run_id: str) -> dict[str, Any] | None:
    """The run's registration, or None when it is not registered (complete, or never enqueued to workers)."""
    try:
        record = json.loads(storage.get(active_key(run_id)))
    except ObjectNotFoundError:
        return None
    except ValueError:
        return {}  # unreadable: registered, nothing more is known
    return record if isinstance(record, dict) else {}


def cancel_registered(storage: Storage, run_id: str, total: int) -> None:
    """Record the cancel in the registration: the sweep then never sends the run's work again."""
    record = registration(storage, run_id) or {"run_id": run_id, "total": total, "registered_at": time.time()}
    storage.put(active_key(run_id), json.dumps({**record, "cancelled_at": time.time()}).encode())


def cancelled_at(storage: Storage, run_id: str) -> float | None:
    """When the run was cancelled, or None when it is not (or not registered)."""
    value = (registration(storage, run_id) or {}).get("cancelled_at")
    return float(value) if isinstance(value, int | float) else None


def unregister(storage: Storage, run_id: str) -> None:
    """The run is complete (its aggregation wrote the summary): the sweep leaves it alone."""
    storage.delete(active_key(run_id))


def registered_at(storage: Storage, run_id: str) -> float:
    """When the run was registered (0 when the record is unreadable or gone)."""
    try:
        return float((registration(storage, run_id) or {})["registered_at"])
    except (KeyError, ValueError, TypeError):
        return 0.0


def active_runs(storage: Storage) -> Iterator[str]:
    """The ids of the registered runs (one listing)."""
    for key in storage.list(ACTIVE_PREFIX):
        name = PurePosixPath(key).name
        if name.endswith(".json"):
            yield name.removesuffix(".json")
