"""The recovery sweep: nothing stranded, with nobody watching.

A run recovers from most faults on its own (tasks retry, stages are idempotent), but some leave
images that are neither done, failed nor queued: a SIGKILLed GPU worker's buffered messages wait
in Redis's ``unacked`` hash for the whole visibility timeout; a reschedule or an aggregation
publish can be lost to a long outage; Redis restarted without persistence forgets queued tasks and
the completion set. The sweep mends each from storage, which stays the source of truth:

* a registered run (``active/<run>.json``) that Redis no longer knows is rebuilt: its completion
  set from the stored outcomes, its remaining images enqueued again;
* a run with no image finished for ``STALL_AFTER_S`` has its unfinished images enqueued again
  (duplicates are skipped by the stages: racing a slow worker only wastes work);
* a run whose images are all finished but has no summary after a grace that grows with its size
  is aggregated again (aggregation is idempotent);
* a registered run whose summary is complete for its current manifest is unregistered.

Why workers schedule it themselves (:func:`workers.runtime.worker.start_sweeper`) rather than
Celery beat: beat is one more singleton process to deploy, watch and keep single; here every CPU
worker runs a timer, and a Redis lease lets one of them send the sweep task per interval. Several
sweeps at once (a lease that expired while a slow sweep ran) are safe: each re-enqueue also
restamps the run's progress, and duplicates cost only work.

Everything here is a plain function of storage, the tracker and a :class:`~celery.Celery` app to
send with, so it is tested without a worker.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

from celery import Celery

from workers.errors import ObjectNotFoundError, RunNotFoundError
from workers.io.storage import Storage
from workers.run.aggregate import is_current_summary
from workers.run.keys import RunKeys
from workers.run.manifest import RunManifest, load_manifest
from workers.run.plan import plan_remaining
from workers.run.registry import active_runs, registered_at, unregister
from workers.runtime.plans import send_plan
from workers.runtime.tracking import RunTracker

logger = logging.getLogger(__name__)

# Aggregation reads one small object per image: measured 4.8 s per 2,000 images against an S3 with
# 2 ms round trips (benchmarks/aggregate.py), so 10 ms per image on top of STALL_AFTER_S is far longer
# than the aggregation itself: a 100k-image run is asked again only every ~27 minutes by default.
AGGREGATION_GRACE_PER_IMAGE_S = 0.01


def aggregation_grace_s(total: int, stall_after_s: float) -> float:
    """How long a run may have every image finished with no summary before it is aggregated again:
    the stall time, plus what aggregating that many images may take."""
    return stall_after_s + AGGREGATION_GRACE_PER_IMAGE_S * total


@dataclass
class SweepReport:
    """What one sweep did (the sweep task's result, shown in Flower)."""

    runs: int = 0
    rebuilt: list[str] = field(default_factory=list)
    reenqueued: dict[str, int] = field(default_factory=dict)
    aggregated: list[str] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"runs": self.runs, "rebuilt": self.rebuilt, "reenqueued": self.reenqueued,
                "reenqueued_images": sum(self.reenqueued.values()), "aggregated": self.aggregated,
                "completed": self.completed}


def summary_is_complete(storage: Storage, manifest: RunManifest) -> bool:
    """True when the stored summary is of the current listing, with nothing pending."""
    try:
        summary = json.loads(storage.get(RunKeys(manifest.run_id).summary))
    except ObjectNotFoundError:
        return False
    return summary.get("pending") == 0 and is_current_summary(summary, manifest)


def sweep(storage: Storage, tracker: RunTracker, app: Celery, stall_after_s: float,
          now: float | None = None) -> SweepReport:
    """Look at every registered run once and mend what is stuck (see the module docstring)."""
    now = time.time() if now is None else now
    report = SweepReport()
    for run_id in list(active_runs(storage)):
        report.runs += 1
        try:
            sweep_run(storage, tracker, app, run_id, stall_after_s, now, report)
        except Exception:  # noqa: BLE001 - one run's trouble (an outage, a corrupt manifest) must not stop the rest
            logger.exception("sweep: run %s could not be checked; next sweep tries again", run_id)
    return report


def sweep_run(storage: Storage, tracker: RunTracker, app: Celery, run_id: str, stall_after_s: float,
              now: float, report: SweepReport) -> None:
    try:
        manifest = load_manifest(storage, run_id)
    except RunNotFoundError:
        unregister(storage, run_id)  # the run was deleted
        return
    if summary_is_complete(storage, manifest):
        unregister(storage, run_id)  # aggregated; its unregistering was lost (or it was resumed with nothing to do)
        report.completed.append(run_id)
        return
    if tracker.is_cancelled(run_id):
        return
    finished, total = tracker.counts(run_id)
    if total is None:  # Redis forgot the run: restarted without persistence, keys expired or dropped
        plan = plan_remaining(storage, manifest)
        tracker.start(run_id, len(manifest.names))
        completed = tracker.finish_many(run_id, plan.finished)
        sent = send_plan(app, plan, aggregate=completed or not plan.has_work)
        logger.warning("sweep: run %s was unknown to Redis; rebuilt, %d images enqueued again", run_id, sent)
        tracker.note_recovery(run_id, rebuilt=1, reenqueued=sent)
        report.rebuilt.append(run_id)
        report.reenqueued[run_id] = sent
        return
    last = tracker.last_progress(run_id) or registered_at(storage, run_id) or now
    idle = now - last
    if finished >= total:
        if idle > aggregation_grace_s(total, stall_after_s):
            send_plan(app, plan_remaining(storage, manifest), aggregate=True)
            tracker.touch(run_id, now)
            tracker.note_recovery(run_id, aggregations=1)
            logger.warning("sweep: run %s finished %.0f s ago with no summary; aggregating again", run_id, idle)
            report.aggregated.append(run_id)
        return
    if idle > stall_after_s:
        plan = plan_remaining(storage, manifest)
        sent = send_plan(app, plan, aggregate=not plan.has_work)
        tracker.touch(run_id, now)  # give the re-enqueued images a whole STALL_AFTER_S before asking again
        tracker.note_recovery(run_id, reenqueued=sent, stalls=1)
        logger.warning("sweep: run %s made no progress for %.0f s; %d images enqueued again", run_id, idle, sent)
        report.reenqueued[run_id] = sent
