"""Distributed mode: hand a planned run to the Celery workers and follow it.

The producer sends tasks by name, so it needs the broker and the store but not the models or
the task code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import secrets
import time
from pathlib import Path
from typing import Any

import redis
from tqdm import tqdm

from workers.errors import ConfigError, RunCancelledError, TrainingFailedError, TransientError
from workers.io.storage import Storage, StorageFactory
from workers.io.weights import CHECKPOINT_PREFIX, CHECKPOINTS_FOLDER
from workers.run.aggregate import AggregateResult, is_current_summary
from workers.run.keys import RunKeys
from workers.run.registry import cancel_registered, register
from workers.run.remaining import RunPlan
from workers.runtime.app import AGGREGATE, CALIBRATE, TRAIN, create_app
from workers.runtime.claims import Claims, reload_attempts
from workers.runtime.enqueue import send_plan
from workers.runtime.liveness import this_process
from workers.runtime.sweep import sweep
from workers.runtime.tracking import OUTAGE_ERRORS, QUICK_RETRY, RunTracker
from workers.settings import Settings, redact_url
from workers.training.artifacts import TrainingOutput
from workers.training.chunks import JobMarker, read_marker
from workers.training.config import TrainConfig, TrainResult
from workers.training.job import TrainJob

POLL_S = 1.0
PASSING: tuple[type[Exception], ...] = (*OUTAGE_ERRORS, TransientError)  # what the waiting producer rides out


def connect_tracker(settings: Settings) -> RunTracker:
    """A tracker on the broker's Redis, checked with PING so a bad URL fails in one clear line.

    Raises:
        ConfigError: Redis is unreachable or refuses the credentials.
    """
    where = redact_url(settings.broker_url)
    try:
        RunTracker.from_url(settings.broker_url_with_password, retry=QUICK_RETRY).client.ping()
    except redis.AuthenticationError as exc:
        raise ConfigError(f"Redis at {where} refused the credentials ({exc}); check REDIS_PASSWORD") from None
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise ConfigError(f"cannot reach Redis at {where}: {exc}") from None
    except redis.ResponseError as exc:
        raise ConfigError(f"Redis at {where} answered: {exc}; check REDIS_PASSWORD") from None
    return RunTracker.from_url(settings.broker_url_with_password)


def enqueue_plan(settings: Settings, storage: Storage, plan: RunPlan, tracker: RunTracker | None = None) -> None:
    """Send one task per remaining image; aggregate at once if nothing remains, or if the images
    storage says are finished complete the run (the last worker may have finished just before).
    Registering a cancelled run resumes it (the caller checked that it may)."""
    tracker = tracker or connect_tracker(settings)
    run_id = plan.run_id
    if plan.has_work:
        # Stale: the run is not complete any more. Deleted before the run is registered, so a sweep
        # in between cannot take the old summary for this start's outcome and unregister the run.
        storage.delete(RunKeys(run_id).summary)
    # Registered first, in storage: from here on the recovery sweep sees the run even if Redis
    # forgets everything, and nobody needs to be watching.
    register(storage, run_id, plan.manifest.total)
    tracker.start(run_id, len(plan.manifest.names), plan.manifest.names)
    reload_attempts(storage, tracker, run_id)  # deaths and errors counted before still count
    # Images finished earlier count towards completion (Redis may have lost them, storage has not).
    completed = tracker.finish_many(run_id, plan.finished)
    send_plan(create_app(settings), plan, aggregate=completed or not plan.has_work)


def wait_for_run(settings: Settings, storage: Storage, plan: RunPlan, tracker: RunTracker | None = None
                 ) -> AggregateResult:
    """Show a progress bar until the run is aggregated; Ctrl-C stops watching, not the run.

    Rides out broker and storage outages (workers retry; so does this loop). Every sweep period it
    runs the recovery sweep on its own run (:func:`workers.runtime.sweep.sweep`, the one stall
    detector the workers use too), so the run completes even with no CPU worker sweeping: Redis
    forgot it, a worker died holding images, a message or the aggregation was lost.

    Raises:
        RunCancelledError: someone ran ``producer cancel`` on the run.
        ConfigError: a worker reported a configuration error for the run (missing weights, a store
            that refuses it): it cannot finish until that is fixed.
    """
    tracker = tracker or connect_tracker(settings)
    run_id, keys = plan.run_id, RunKeys(plan.run_id)
    claims = Claims(storage, tracker, this_process(), settings)
    app = create_app(settings)
    next_sweep = time.monotonic() + settings.sweep_every_s
    with tqdm(total=len(plan.manifest.names), desc=f"run {run_id}", unit="img") as bar:
        while True:
            try:
                # Only a summary of this listing is this run's outcome: an earlier one may still be there.
                if storage.exists(keys.summary):
                    summary = json.loads(storage.get(keys.summary))
                    if summary["pending"] == 0 and is_current_summary(summary, plan.manifest):
                        bar.update(bar.total - bar.n)
                        break
                if tracker.is_cancelled(run_id):
                    raise RunCancelledError(f"run {run_id} was cancelled; `producer enqueue --resume-cancelled` "
                                            "on it resumes it")
                finished, _ = tracker.counts(run_id)
                bar.update(max(finished - bar.n, 0))
                error = tracker.config_error(run_id)
                if error is not None:
                    # Every image of the kind fails alike until an operator acts: say so now, not
                    # after the run has burnt its attempts. Workers go on with what they can do.
                    raise ConfigError(f"workers report a configuration error on run {run_id}: {error}; fix it, "
                                      "then `producer enqueue` again (with --retry-failed for the images it failed)")
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + settings.sweep_every_s
                    report = sweep(claims, app, settings.stall_after_s, [run_id], lease_s=settings.sweep_every_s * 0.9)
                    mended = report.rebuilt or report.restored or report.reenqueued.get(run_id) or report.aggregated
                    if mended:
                        bar.set_postfix_str(f"recovery: {_mended(report.as_dict())}")
            except PASSING as exc:
                bar.set_postfix_str(f"waiting for servers: {type(exc).__name__}")
            time.sleep(POLL_S)
    return AggregateResult(**{k: summary[k] for k in ("run_id", "total", "written", "failed", "pending", "complete")})


def _mended(report: dict[str, Any]) -> str:
    parts = {"rebuilt": len(report["rebuilt"]), "restored": sum(report["restored"].values()),
             "sent again": report["reenqueued_images"], "aggregated": len(report["aggregated"])}
    return ", ".join(f"{k} {v}" for k, v in parts.items() if v)


def progress_lines(settings: Settings, run_id: str) -> list[str]:
    """What Redis says of a run in progress: last progress, whether it is stalled, what the sweep did."""
    tracker = connect_tracker(settings)
    finished, total = tracker.counts(run_id)
    if total is None:
        return ["Redis does not know this run (restarted without persistence?): the sweep rebuilds it from storage"]
    lines = []
    last = tracker.last_progress(run_id)
    if last is not None:
        idle = time.time() - last
        state = (f"stalled: the sweep sends again what is lost (STALL_AFTER_S {settings.stall_after_s:g})"
                 if idle > settings.stall_after_s else "not stalled")
        lines.append(f"last progress {idle:.0f} s ago, {finished}/{total} finished; {state}")
    held = tracker.holds(run_id)
    if held:
        workers = sorted({hold.holder.node for _, hold in held.values()})
        lines.append(f"in progress on workers: {len(held)} images ({', '.join(workers)})")
    error = tracker.config_error(run_id)
    if error is not None:
        lines.append(f"CONFIGURATION ERROR reported by the workers: {error}")
    recovery = tracker.recovery(run_id)
    if recovery:
        done = ", ".join(f"{k} {v:g}" for k, v in sorted(recovery.items()) if k != "last_sweep")
        lines.append(f"recovery: {done}; last sweep {time.time() - recovery.get('last_sweep', time.time()):.0f} s ago")
    return lines


def cancel(settings: Settings, storage: Storage, run_id: str, total: int) -> None:
    """Mark the run cancelled, in storage first (its registration: what the sweep reads, even after
    Redis forgot everything), then in Redis: workers drop its queued tasks as they reach them, unharmed."""
    tracker = connect_tracker(settings)
    cancel_registered(storage, run_id, total)
    tracker.cancel(run_id)


def aggregate(settings: Settings, run_id: str, allow_partial: bool, timeout_s: float = 600) -> dict[str, Any]:
    """Run the aggregate task on a CPU worker and return its result."""
    connect_tracker(settings)
    app = create_app(settings)
    return app.send_task(AGGREGATE, (run_id, allow_partial)).get(timeout=timeout_s)


def calibrate(settings: Settings, dataset_url: str, output_url: str | None, timeout_s: float = 3600) -> dict[str, Any]:
    """Fit the tone curve on a CPU worker (the dataset is in object storage) and return its summary."""
    connect_tracker(settings)
    return create_app(settings).send_task(CALIBRATE, (dataset_url, output_url)).get(timeout=timeout_s)


def train(settings: Settings, dataset: str, output: str | None, start: str | None, config: TrainConfig,
          restart: bool, photos: str | None = None, poll_s: float = 2.0) -> TrainResult:
    """Hand a training job to the workers of the ``train`` queue and follow its stored state to its end.

    The job runs as a chain of time-boxed chunks (TRAIN_CHUNK_S each) driven by the marker the
    chunks write next to the checkpoint (:func:`workers.training.chunks.next_step`); a running chunk
    restamps its heartbeat there. When the job shows no news for STALL_AFTER_S (its worker died,
    a message was lost), the message that should be running is sent again: the marker lets exactly
    one copy run. Ctrl-C stops watching, not the job.

    Raises:
        TrainingFailedError: a chunk failed for good; its error.
        ConfigError: no news for TRAIN_TIMEOUT_STALLS x STALL_AFTER_S, even after sending again.
    """
    connect_tracker(settings)
    storages = StorageFactory(settings)
    app = create_app(settings)
    start = publish_start(start, storages.open(settings.storage_url))
    job = TrainJob(dataset, output, start, dataclasses.asdict(config), restart, started_at=time.time(), photos=photos)
    first = secrets.token_hex(16)
    app.send_task(TRAIN, (job.to_dict(),), task_id=first, ignore_result=True)
    started = time.monotonic()
    trained = TrainingOutput.at(job.output_location(), storages)
    watch = JobWatch(first, settings.stall_after_s)
    with tqdm(total=config.step_budget, desc="train (workers)", unit="step") as bar:
        while True:
            try:
                marker = read_marker(job, storages)
                mine = marker is not None and marker.job == job.started_at
                provenance = trained.read_provenance() if mine else None
            except TransientError as exc:
                bar.set_postfix_str(f"waiting for storage: {exc}")
                time.sleep(poll_s)
                continue
            ours = marker if mine else None
            if provenance and ours is not None:
                bar.update(max(int(provenance["steps"]) - bar.n, 0))
                best = provenance.get("holdout_psnr")
                bar.set_postfix_str(f"chunk {ours.chunk}, held-back {best:.2f} dB" if best is not None else f"chunk {ours.chunk}")
            if ours is not None and ours.failed:
                raise TrainingFailedError(f"training job failed in chunk {ours.chunk}: {ours.error}")
            if ours is not None and ours.done:
                break
            resend = watch.check(ours)
            if resend is not None:
                bar.set_postfix_str(f"no news for {settings.stall_after_s:g} s: sending the job's message again")
                app.send_task(TRAIN, (dataclasses.replace(job, chunk=ours.chunk if ours else 0).to_dict(),),
                              task_id=resend, ignore_result=True)
            time.sleep(poll_s)
    provenance = trained.read_provenance() or {}
    return TrainResult(int(provenance.get("steps", 0)), int(provenance.get("best_step", 0)), provenance.get("holdout_psnr"),
                       bool(provenance.get("finished")), time.monotonic() - started,
                       [(s["file"], s["reason"]) for s in provenance.get("pairs", {}).get("skipped", [])], trained.url())


def publish_start(start: str | None, run_store: Storage) -> str | None:
    """The start a train task may use for ``--from``: a local file is copied into the run store under
    its sha256 (once) and named by it, ``checkpoint:<sha256>.<ext>``, which workers fetch and check by
    hash; any other reference goes as given (the workers' TRAIN_SOURCES decides)."""
    if start is None or ":" in start.split("/", 1)[0] or not Path(start).expanduser().is_file():
        return start
    path = Path(start).expanduser()
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    key = f"{CHECKPOINTS_FOLDER}/{digest}{path.suffix.lower()}"
    if not run_store.exists(key):
        run_store.put(key, data)
    return f"{CHECKPOINT_PREFIX}{digest}{path.suffix.lower()}"


TRAIN_TIMEOUT_STALLS = 3  # stall periods with no news, each ending in the job's message sent again, before giving up


class JobWatch:
    """The producer's stall detector for a training job: news is any change of the marker (a chunk
    started, beat, completed). After STALL_AFTER_S without news it names the message to send again
    (the running chunk's, the next chunk's, or the first); after TRAIN_TIMEOUT_STALLS of those it
    gives up with a clear error rather than wait for ever."""

    def __init__(self, first_task: str, stall_after_s: float) -> None:
        self.first_task, self.stall_after_s = first_task, stall_after_s
        self.last: JobMarker | None = None
        self.since = time.monotonic()
        self.stalls = 0

    def check(self, marker: JobMarker | None) -> str | None:
        """The task id to send again now, or None.

        Raises:
            ConfigError: the job gave no news for TRAIN_TIMEOUT_STALLS stall periods.
        """
        if marker != self.last:
            self.last, self.since, self.stalls = marker, time.monotonic(), 0
            return None
        if time.monotonic() - self.since < self.stall_after_s:
            return None
        self.since, self.stalls = time.monotonic(), self.stalls + 1
        waited = self.stalls * self.stall_after_s
        if self.stalls > TRAIN_TIMEOUT_STALLS:
            where = "no worker has started it" if marker is None else f"chunk {marker.chunk} gives no news"
            raise ConfigError(f"training job stalled: {where} after {waited:.0f} s, its message sent again "
                              f"{TRAIN_TIMEOUT_STALLS} times; is a worker serving the `train` queue running? "
                              "Re-run the command to resume from the saved state")
        if marker is None:
            return self.first_task
        return marker.next if marker.complete else marker.task
