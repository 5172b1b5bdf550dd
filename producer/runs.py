"""``producer runs``: the runs a store holds, newest first, each with its state in one line."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from workers.errors import RunNotFoundError
from workers.io.storage import Storage, fetch_in_order
from workers.run.aggregate import is_current_summary
from workers.run.keys import ImageState, RunKeys, RunProgress
from workers.run.manifest import RunManifest, load_manifest
from workers.run.registry import cancelled_at, registration


@dataclass(frozen=True)
class RunLine:
    run_id: str
    source: str
    preset: str
    state: str  # complete, cancelled, in progress, stopped
    done: int
    failed: int
    total: int
    created_at: str

    def age(self, now: datetime) -> str:
        try:
            seconds = (now - datetime.fromisoformat(self.created_at)).total_seconds()
        except ValueError:
            return "?"
        for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
            if seconds >= size:
                return f"{seconds / size:.0f} {unit}"
        return f"{seconds:.0f} s"


def run_line(storage: Storage, manifest: RunManifest) -> RunLine:
    """One run's state: complete (its current summary has nothing pending), cancelled, in progress
    (registered: workers or a producer own it) or stopped (an in-process run that was interrupted;
    enqueue it again to resume)."""
    run_id, keys = manifest.run_id, RunKeys(manifest.run_id)
    counts = RunProgress.read(storage, run_id).counts(manifest.names)
    state = "stopped"
    if storage.exists(keys.summary):
        summary = json.loads(storage.get(keys.summary))
        if is_current_summary(summary, manifest) and summary.get("pending") == 0:
            state = "complete"
    if state != "complete":
        if cancelled_at(storage, run_id) is not None:
            state = "cancelled"
        elif registration(storage, run_id) is not None:
            state = "in progress"
    failed = counts[ImageState.FAILED] + len(manifest.rejected)
    return RunLine(
        run_id,
        manifest.source,
        manifest.pipeline.preset,
        state,
        counts[ImageState.DONE],
        failed,
        manifest.total,
        manifest.created_at,
    )


def list_runs(storage: Storage, limit: int, threads: int = 4) -> list[RunLine]:
    """The ``limit`` newest runs (by their manifest's creation time)."""

    def manifest_of(run_id: str) -> RunManifest | None:
        try:
            return load_manifest(storage, run_id)
        except RunNotFoundError:  # a folder without a manifest (being created, or not a run)
            return None

    manifests = [m for m in fetch_in_order(manifest_of, list(storage.folders("runs")), threads) if m is not None]
    newest = sorted(manifests, key=lambda m: m.created_at, reverse=True)[:limit]
    return list(fetch_in_order(lambda m: run_line(storage, m), newest, threads))


def format_runs(lines: list[RunLine], now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    rows = [("RUN", "PRESET", "STATE", "DONE", "FAILED", "TOTAL", "AGE", "SOURCE")]
    rows += [
        (r.run_id, r.preset, r.state, str(r.done), str(r.failed), str(r.total), r.age(now), r.source) for r in lines
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1] for row in rows
    )
