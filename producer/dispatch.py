"""Distributed mode: hand a planned run to the Celery workers and follow it.

The producer sends tasks by name, so it needs the broker and the store but not the models or
the task code.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import redis
from tqdm import tqdm

from workers.errors import ConfigError, RunCancelledError, TransientError
from workers.io.storage import Storage, StorageFactory
from workers.run.aggregate import AggregateResult, is_current_summary
from workers.run.keys import RunKeys
from workers.run.plan import RunPlan, plan_remaining
from workers.run.registry import register
from workers.runtime.app import AGGREGATE, CALIBRATE, TRAIN, create_app
from workers.runtime.plans import send_plan
from workers.runtime.sweep import aggregation_grace_s
from workers.runtime.tracking import OUTAGE_ERRORS, QUICK_RETRY, RunTracker
from workers.settings import Settings, redact_url
from workers.training.artifacts import TrainingOutput
from workers.training.config import TrainConfig, TrainResult
from workers.training.job import TrainJob, read_marker

POLL_S = 1.0
RESUME_AFTER_S = 10.0  # how long the run may be unknown to Redis before the producer enqueues it again


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
    storage says are finished complete the run (the last worker may have finished just before)."""
    tracker = tracker or connect_tracker(settings)
    run_id = plan.run_id
    # Registered first, in storage: from here on the recovery sweep sees the run even if Redis
    # forgets everything, and nobody needs to be watching.
    register(storage, run_id, plan.manifest.total)
    tracker.start(run_id, len(plan.manifest.names))
    # Images finished earlier count towards completion (Redis may have lost them, storage has not).
    completed = tracker.finish_many(run_id, plan.finished)
    if plan.has_work:
        storage.delete(RunKeys(run_id).summary)  # stale: the run is not complete any more
    send_plan(create_app(settings), plan, aggregate=completed or not plan.has_work)


def wait_for_run(settings: Settings, storage: Storage, plan: RunPlan, tracker: RunTracker | None = None
                 ) -> AggregateResult:
    """Show a progress bar until the run is aggregated; Ctrl-C stops watching, not the run.

    Rides out broker and storage outages (workers retry; so does this loop). When the run stalls in
    a way only a resume can mend, the run is enqueued again from what storage holds (which also
    aggregates it when nothing is left), so it still completes:

    * Redis forgot the run: a restart without persistence loses queued tasks and the completion set;
    * Redis counts every image finished but no aggregation appeared: the reply that would have
      enqueued it was lost to a connection drop (the retried call cannot tell it completed the run).

    Raises:
        RunCancelledError: someone ran ``producer cancel`` on the run.
    """
    tracker = tracker or connect_tracker(settings)
    run_id, keys = plan.run_id, RunKeys(plan.run_id)
    stalled_since: float | None = None
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
                    raise RunCancelledError(f"run {run_id} was cancelled; `producer enqueue` on it again resumes it")
                finished, total = tracker.counts(run_id)
                bar.update(max(finished - bar.n, 0))
                stall = _stall(finished, total, settings.stall_after_s)
                if stall is None:
                    stalled_since = None
                elif stalled_since is None:
                    stalled_since = time.monotonic()
                elif time.monotonic() - stalled_since > stall[1]:
                    bar.set_postfix_str(f"{stall[0]}: enqueueing the rest again")
                    enqueue_plan(settings, storage, plan_remaining(storage, plan.manifest), tracker)
                    stalled_since = None
            except (*OUTAGE_ERRORS, TransientError) as exc:
                bar.set_postfix_str(f"waiting for servers: {type(exc).__name__}")
            time.sleep(POLL_S)
    return AggregateResult(**{k: summary[k] for k in ("run_id", "total", "written", "failed", "pending", "complete")})


def _stall(finished: int, total: int | None, stall_after_s: float) -> tuple[str, float] | None:
    """What is wrong with a run that has no summary yet, and how long to give it before resuming."""
    if total is None:
        return "Redis lost the run", RESUME_AFTER_S
    if finished >= total:
        return "no aggregation", aggregation_grace_s(total, stall_after_s)
    return None


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
        state = (f"stalled: the sweep re-enqueues what is left (STALL_AFTER_S {settings.stall_after_s:g})"
                 if idle > settings.stall_after_s else "not stalled")
        lines.append(f"last progress {idle:.0f} s ago, {finished}/{total} finished; {state}")
    recovery = tracker.recovery(run_id)
    if recovery:
        done = ", ".join(f"{k} {v:g}" for k, v in sorted(recovery.items()) if k != "last_sweep")
        lines.append(f"recovery: {done}; last sweep {time.time() - recovery.get('last_sweep', time.time()):.0f} s ago")
    return lines


def cancel(settings: Settings, run_id: str) -> None:
    """Mark the run cancelled: workers drop its queued tasks as they reach them, unharmed."""
    connect_tracker(settings).cancel(run_id)


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
    """Hand a training job to the workers of the ``train`` queue and follow it to its end.

    The job runs as a chain of time-boxed chunks (TRAIN_CHUNK_S each); this follows the marker and
    the provenance the chunks write next to the checkpoint. Ctrl-C stops watching, not the job.
    """
    connect_tracker(settings)
    storages = StorageFactory(settings)
    job = TrainJob(dataset, output, start, dataclasses.asdict(config), restart, started_at=time.time(), photos=photos)
    create_app(settings).send_task(TRAIN, (job.to_dict(),), ignore_result=True)
    started = time.monotonic()
    trained = TrainingOutput.at(job.output_location(), storages)
    with tqdm(total=config.step_budget, desc="train (workers)", unit="step") as bar:
        while True:
            try:
                marker = read_marker(job, storages) or {}
                mine = marker.get("job") == job.started_at
                provenance = trained.read_provenance() if mine else None
            except TransientError as exc:
                bar.set_postfix_str(f"waiting for storage: {exc}")
                time.sleep(poll_s)
                continue
            if provenance:
                bar.update(max(int(provenance["steps"]) - bar.n, 0))
                best = provenance.get("holdout_psnr")
                bar.set_postfix_str(f"chunk {marker['chunk']}, held-back {best:.2f} dB" if best is not None else f"chunk {marker['chunk']}")
            if mine and marker.get("done"):
                break
            time.sleep(poll_s)
    provenance = trained.read_provenance() or {}
    return TrainResult(int(provenance.get("steps", 0)), int(provenance.get("best_step", 0)), provenance.get("holdout_psnr"),
                       bool(provenance.get("finished")), time.monotonic() - started,
                       [(s["file"], s["reason"]) for s in provenance.get("pairs", {}).get("skipped", [])], trained.url())
