"""The recovery sweep: nothing stranded, nothing sent twice, with nobody watching.

A run recovers from most faults on its own (tasks retry, stages are idempotent). What the sweep
mends, from storage (the source of truth) and what the broker and the holds say:

* **a worker process that is gone holding images** (SIGKILL, an OOM kill, a pod evicted): its
  holds are buried, a death counted for each image it was computing
  (:meth:`~workers.runtime.claims.Claims.bury`), and its unacknowledged messages handed back to
  the front of their queues at once instead of after the visibility timeout;
* **a run Redis no longer knows** (restarted without persistence, keys expired): its completion
  set is rebuilt from the stored outcomes, its attempts cache reloaded, and what is left is sent
  again;
* **lost messages**: when a run has had no image finished for STALL_AFTER_S, the images that are
  neither finished, nor held by a live process, nor waiting in a queue or unacknowledged
  (:mod:`workers.runtime.broker`) are sent again. An image whose message only waits its turn behind
  a backlog is never sent twice;
* **holds that outlived their message** (an outage longer than the tracker's retries lost a
  release, and the message was acknowledged or its retry dropped): in a stalled run, a hold older
  than STALL_AFTER_S whose image has no message in any queue and none unacknowledged is abandoned,
  whoever holds it, live or dead: the image is sent again under the hold's task id, which the next
  claim takes over (:mod:`workers.runtime.claims`);
* **deliveries nobody will work on** (a worker's connection dropped while Redis was down: kombu
  could not put its prefetched messages back, and they wait in the unacknowledged hash for the
  whole visibility timeout): in a stalled run, a message for an image nobody holds, delivered (or
  due, for a retry with a countdown) more than STALL_AFTER_S ago, is handed back to its queue;
* **a run whose images are all finished but has no summary** after a grace that grows with its
  size: aggregated again (aggregation is idempotent);
* a registered run whose summary is complete for its current manifest is unregistered; a run
  cancelled in storage stays cancelled (its Redis flag is restored if Redis forgot it).

One stall detector: the waiting producer calls :func:`sweep` for its own run, the workers for every
registered run. A per-run lease keeps two sweeps off one run at once.

Why workers schedule it themselves (:func:`workers.runtime.worker.start_sweeper`) rather than
Celery beat: beat is one more singleton process to deploy, watch and keep single; here every CPU
worker runs a timer, and a Redis lease lets one of them send the sweep task per interval, on its
own queue and with an expiry, so a sweep never waits behind a backlog and a late one is dropped.

Everything here is a plain function of storage, the tracker and a :class:`~celery.Celery` app to
send with, so it is tested without a worker.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from celery import Celery

from workers.errors import ConfigError, ObjectNotFoundError, RunNotFoundError
from workers.io.storage import Storage
from workers.run.aggregate import is_current_summary
from workers.run.keys import RunKeys, RunProgress
from workers.run.manifest import RunManifest, load_manifest
from workers.run.registry import active_runs, cancelled_at, registered_at, unregister
from workers.run.remaining import plan_from, plan_remaining
from workers.runtime.app import CPU_QUEUE, GPU_QUEUE
from workers.runtime.broker import Delivery, queued_images, restore, unacked_messages
from workers.runtime.claims import Claims, reload_attempts
from workers.runtime.enqueue import send_plan
from workers.runtime.holds import Hold
from workers.runtime.liveness import alive

logger = logging.getLogger(__name__)

# Aggregation reads one small object per image: measured 4.8 s per 2,000 images against an S3 with
# 2 ms round trips (benchmarks/aggregate.py), so 10 ms per image on top of STALL_AFTER_S is far longer
# than the aggregation itself: a 100k-image run is asked again only every ~27 minutes by default.
AGGREGATION_GRACE_PER_IMAGE_S = 0.01
IMAGE_QUEUES = (CPU_QUEUE, GPU_QUEUE)
_REFUSED: list[bool] = []  # this process was told once that the run store refuses it


def aggregation_grace_s(total: int, stall_after_s: float) -> float:
    """How long a run may have every image finished with no summary before it is aggregated again:
    the stall time, plus what aggregating that many images may take."""
    return stall_after_s + AGGREGATION_GRACE_PER_IMAGE_S * total


@dataclass
class SweepReport:
    """What one sweep did (the sweep task's result, shown in Flower)."""

    runs: int = 0
    rebuilt: list[str] = field(default_factory=list)
    restored: Counter[str] = field(default_factory=Counter)  # dead holders' messages handed back
    deaths: Counter[str] = field(default_factory=Counter)
    reenqueued: dict[str, int] = field(default_factory=dict)  # lost messages sent again
    aggregated: list[str] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)  # a configuration error stops them

    def as_dict(self) -> dict[str, object]:
        return {"runs": self.runs, "rebuilt": self.rebuilt, "restored": dict(self.restored),
                "deaths": dict(self.deaths), "reenqueued": self.reenqueued,
                "reenqueued_images": sum(self.reenqueued.values()), "aggregated": self.aggregated,
                "completed": self.completed, "blocked": self.blocked}


def summary_is_complete(storage: Storage, manifest: RunManifest) -> bool:
    """True when the stored summary is of the current listing, with nothing pending."""
    try:
        summary = json.loads(storage.get(RunKeys(manifest.run_id).summary))
    except ObjectNotFoundError:
        return False
    return summary.get("pending") == 0 and is_current_summary(summary, manifest)


def sweep(claims: Claims, app: Celery, stall_after_s: float, run_ids: Iterable[str] | None = None,
          now: float | None = None, lease_s: float = 1.0) -> SweepReport:
    """Look at each run once (default: every registered run) and mend what is stuck; then look for
    the lost messages of the runs that stalled, with one read of the queues for all of them.

    ``lease_s``: how long this sweep keeps each run from other sweeps (0: no lease, for tests).
    """
    now = time.time() if now is None else now
    report = SweepReport()
    stalled: list[RunManifest] = []
    try:
        run_ids = list(active_runs(claims.storage) if run_ids is None else run_ids)
    except ConfigError as exc:  # the store refuses this worker: say it once, not a traceback per sweep
        if _REFUSED:
            logger.warning("sweep: the run store still refuses this worker: %s", exc)
        else:
            logger.critical("sweep: CONFIGURATION ERROR, the run store refuses this worker: %s", exc)
        _REFUSED.append(True)
        return report
    for run_id in run_ids:
        report.runs += 1
        try:
            if lease_s > 0 and not claims.tracker.lease(f"sweep:{run_id}", claims.me.token, lease_s):
                continue  # another sweep (the waiting producer's, or a late one) is on it
            manifest = check_run(claims, app, run_id, stall_after_s, now, report)
            if manifest is not None:
                stalled.append(manifest)
        except Exception:  # one run's trouble (an outage, a corrupt manifest) must not stop the rest
            logger.exception("sweep: run %s could not be checked; next sweep tries again", run_id)
    if stalled:
        try:
            resend_lost(claims, app, stalled, now, report, stall_after_s)
        except Exception:  # the next stall period tries again
            logger.exception("sweep: could not look for lost messages of %s", [m.run_id for m in stalled])
    return report


def check_run(claims: Claims, app: Celery, run_id: str, stall_after_s: float, now: float,
              report: SweepReport) -> RunManifest | None:
    """Mend one run; return its manifest when its lost messages must be looked for."""
    storage, tracker = claims.storage, claims.tracker
    try:
        manifest = load_manifest(storage, run_id)
    except RunNotFoundError:
        unregister(storage, run_id)  # the run was deleted
        return None
    if summary_is_complete(storage, manifest):
        unregister(storage, run_id)  # aggregated; its unregistering was lost (or it was resumed with nothing to do)
        report.completed.append(run_id)
        return None
    if cancelled_at(storage, run_id) is not None:
        if not tracker.is_cancelled(run_id):
            tracker.cancel(run_id)  # Redis forgot it: its workers drop the run's messages again
        return None
    if tracker.is_cancelled(run_id):
        return None
    finished, total = tracker.counts(run_id)
    if total is None:  # Redis forgot the run: restarted without persistence, keys expired or dropped
        plan = plan_remaining(storage, manifest)
        tracker.start(run_id, len(manifest.names), manifest.names)
        reload_attempts(storage, tracker, run_id)
        completed = tracker.finish_many(run_id, plan.finished)
        tracker.note_recovery(run_id, rebuilt=1)
        logger.warning("sweep: run %s was unknown to Redis; rebuilt from storage", run_id)
        report.rebuilt.append(run_id)
        if completed or not plan.has_work:
            send_plan(app, plan.only(()), aggregate=True)
            return None
        return manifest  # its queued messages went with Redis: look for what is lost now
    idle = now - (tracker.last_progress(run_id) or registered_at(storage, run_id) or now)
    if finished >= total:
        if idle > aggregation_grace_s(total, stall_after_s):
            send_plan(app, plan_remaining(storage, manifest), aggregate=True)
            tracker.touch(run_id, now)
            tracker.note_recovery(run_id, aggregations=1)
            logger.warning("sweep: run %s finished %.0f s ago with no summary; aggregating again", run_id, idle)
            report.aggregated.append(run_id)
        return None
    bury_dead_holders(claims, app, run_id, report)
    error = tracker.config_error(run_id)
    if error is not None:
        report.blocked.append(run_id)  # nothing is sent again until it is fixed and the run enqueued again
        return None
    return manifest if idle > stall_after_s else None


def bury_dead_holders(claims: Claims, app: Celery, run_id: str, report: SweepReport) -> None:
    """Bury the holds of processes that are gone, and hand their messages back to their queues now."""
    holds = claims.tracker.holds(run_id)
    if not holds:
        return
    living = alive([hold.holder for _, hold in holds.values()], claims.tracker.client)
    dead = {name: entry for name, entry in holds.items() if not living[entry[1].holder.token]}
    if not dead:
        return
    deliveries = unacked_messages(claims.tracker.client)
    for name, (raw, hold) in dead.items():
        attempts = claims.bury(run_id, raw, hold)
        if attempts is None:
            continue  # buried by someone else meanwhile
        if hold.batch:
            report.deaths[run_id] += 1
        tag = held_delivery(deliveries, hold)
        if tag is not None:
            restore(app, tag)
            report.restored[run_id] += 1
            claims.tracker.note_recovery(run_id, restored=1)
        # No tag: its message was put back already (a prefork child's is requeued by Celery at once,
        # or the visibility timeout passed), or it is lost: looked for when the run stalls.
        logger.warning("sweep: run %s: %s was held by %s, which is gone; %s", run_id, name, hold.holder.node,
                       "its message is back in the queue" if tag is not None else "no unacknowledged message left")


def held_delivery(deliveries: list[Delivery], hold: Hold) -> bytes | None:
    """The delivery tag of the message a dead holder held: its task id, delivered before it was
    claimed. A copy delivered since (Celery requeues a dead pool child's message at once, and
    another child may hold it already) is someone else's: handing that back would duplicate it."""
    for delivery in deliveries:
        if delivery.message.task_id == hold.task_id and delivery.at <= hold.since:
            return delivery.tag
    return None


def resend_lost(claims: Claims, app: Celery, manifests: list[RunManifest], now: float, report: SweepReport,
                stall_after_s: float) -> None:
    """Send again the images of stalled runs that have no message anywhere and no holder working on
    one; hand back the unacknowledged messages nobody works on.

    Read in this order: storage, the queues, the unacknowledged messages, the holds, storage again.
    An image that moved between the two storage reads is in motion, not lost; an image that is
    queued at any point of the reads, or delivered or held within the last STALL_AFTER_S, is not
    lost either.
    """
    storage, tracker = claims.storage, claims.tracker
    before = {m.run_id: RunProgress.read(storage, m.run_id) for m in manifests}
    in_queues = queued_images(tracker.client, IMAGE_QUEUES, [m.run_id for m in manifests])
    delivered: dict[str, dict[str, list[Delivery]]] = {m.run_id: {} for m in manifests}
    for delivery in unacked_messages(tracker.client):
        if delivery.message.run_id in delivered:
            delivered[delivery.message.run_id].setdefault(delivery.message.name, []).append(delivery)
    since = now - stall_after_s
    for manifest in manifests:
        run_id = manifest.run_id
        holds = tracker.holds(run_id)
        after = RunProgress.read(storage, run_id)
        plan = plan_from(manifest, after)
        lost, task_ids = [], {}
        for name in (*plan.to_denoise, *plan.to_upscale):
            if name in in_queues[run_id] or before[run_id].state(name) != after.state(name):
                continue  # waiting its turn, or in motion
            deliveries, entry = delivered[run_id].get(name, []), holds.get(name)
            if deliveries:
                if entry is None and all(d.due < since for d in deliveries):
                    restore(app, deliveries[0].tag)  # nobody will work on it: back to its queue
                    report.restored[run_id] += 1
                    tracker.note_recovery(run_id, restored=1)
                    logger.warning("sweep: run %s: %s was delivered %.0f s ago and nobody works on it; its message "
                                   "is back in the queue", run_id, name, now - deliveries[0].due)
                continue
            if entry is not None:
                hold = entry[1]
                if hold.since >= since:
                    continue  # claimed within the period: in motion
                task_ids[name] = hold.task_id
                logger.warning("sweep: run %s: %s has been held by %s for %.0f s with no message anywhere; the hold "
                               "is abandoned and the image sent again", run_id, name, hold.holder.node, now - hold.since)
            lost.append(name)
        sent = send_plan(app, plan.only(lost), aggregate=not plan.has_work, task_ids=task_ids)
        tracker.touch(run_id, now)  # look again a whole STALL_AFTER_S later at the earliest
        tracker.note_recovery(run_id, reenqueued=sent, stalls=1)
        report.reenqueued[run_id] = sent
        queued = len(plan.to_denoise) + len(plan.to_upscale) - sent
        logger.warning("sweep: run %s made no progress; %d unfinished images are queued or in progress, %d lost "
                       "ones sent again", run_id, queued, sent)
