"""Celery tasks: thin shells that take ids, call one stage function and report what happened.

Messages carry a run id and an input name, never pixels. Every stage skips work whose output
exists, so a redelivered or duplicated message is harmless.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections import defaultdict
from typing import Any

import redis
from celery import signals
from celery_batches import Batches, SimpleRequest

from workers.errors import RunNotFoundError, TransientError
from workers.report import report_stage
from workers.run.aggregate import aggregate_stage
from workers.run.stages import denoise_stage, upscale_stage
from workers.runtime.app import app
from workers.runtime.tracking import OUTAGE_ERRORS
from workers.runtime.worker import SETTINGS, stage_context, tracker
from workers.training.calibrate import calibrate_here, task_destination
from workers.training.job import TrainJob, train_chunk

logger = logging.getLogger(__name__)

RETRY = {
    # Redis trouble outlasting the tracker's own retries is as transient as a storage outage.
    "autoretry_for": (TransientError, *OUTAGE_ERRORS),
    "retry_backoff": 2,
    "retry_backoff_max": 60,  # keep well under the visibility timeout: a waiting retry is unacked
    "retry_jitter": True,
    "max_retries": SETTINGS.task_max_retries,
}


def finish_image(run_id: str, name: str) -> None:
    """Record that ``name`` is finished; the call that completes the run enqueues its aggregation."""
    if tracker().finish(run_id, name):
        logger.info("run %s: last image finished, aggregating", run_id)
        aggregate.apply_async((run_id,))


# Nobody reads a per-image result (Flower gets events): storing 10,000 of them would only fill Redis.
@app.task(name="workers.tasks.denoise", ignore_result=True, **RETRY)
def denoise(run_id: str, name: str) -> dict[str, Any]:
    """CPU stage for one image, then hand it to the GPU queue."""
    if tracker().is_cancelled(run_id):
        return {"name": name, "status": "cancelled"}
    outcome = denoise_stage(stage_context(), run_id, name)
    if outcome.status == "denoised":
        upscale.apply_async((run_id, name), ignore_result=True)
    else:
        finish_image(run_id, name)
    return outcome.as_dict()


@app.task(name="workers.tasks.upscale", base=Batches, flush_every=SETTINGS.gpu_batch_size,
          flush_interval=SETTINGS.gpu_batch_wait_s)
def upscale(requests: list[SimpleRequest]) -> None:
    """GPU stage. celery-batches hands over the messages waiting on this worker (up to one batch);
    each run's images go through :func:`upscale_stage`, which batches same-size images.

    celery-batches acknowledges every message once this returns, whatever happened, so nothing may
    escape: each image is either finished or rescheduled here.
    """
    by_run: dict[str, list[SimpleRequest]] = defaultdict(list)
    for request in requests:
        by_run[request.args[0]].append(request)
    with _TaskEvents(requests) as events:
        for run_id, run_requests in by_run.items():
            try:
                _upscale_run(run_id, run_requests, events)
            except Exception as exc:  # noqa: BLE001 - see the docstring: reschedule, never drop
                logger.exception("run %s: upscale batch failed; rescheduling %d images", run_id, len(run_requests))
                for request in run_requests:
                    _reschedule(request, exc)
                events.failed(run_requests, exc)


def _upscale_run(run_id: str, requests: list[SimpleRequest], events: _TaskEvents) -> None:
    if tracker().is_cancelled(run_id):
        events.succeeded(requests, lambda r: {"status": "cancelled"})
        return
    started = time.perf_counter()
    try:
        outcomes = upscale_stage(stage_context(), run_id, [r.args[1] for r in requests])
    except RunNotFoundError as exc:  # the run was deleted: nothing to do for these messages
        events.failed(requests, exc)
        return
    elapsed = time.perf_counter() - started
    by_name = {outcome.name: outcome for outcome in outcomes}  # duplicates of a name share one outcome
    for request in requests:
        outcome = by_name[request.args[1]]
        if outcome.status == "retry":
            error = outcome.error or TransientError(outcome.reason)
            _reschedule(request, error)
            events.failed([request], error)
        else:
            finish_image(run_id, outcome.name)
            events.succeeded([request], lambda r, o=outcome: o.as_dict(), runtime=elapsed)


@signals.task_received.connect
def _announce_batched_request(sender: Any, request: Any, **_: Any) -> None:
    """celery-batches buffers upscale messages without the task-received event Celery's default
    strategy sends; send it, so Flower shows when each image reached the GPU worker."""
    if request.name != upscale.name or not getattr(sender, "event_dispatcher", None):
        return
    sender.event_dispatcher.send("task-received", uuid=request.id, name=request.name, args=request.argsrepr,
                                 kwargs=request.kwargsrepr, root_id=request.root_id, parent_id=request.parent_id,
                                 retries=(request.request_dict or {}).get("retries", 0))


def _reschedule(request: SimpleRequest, error: BaseException) -> None:
    """Retry one image later with exponential backoff; after TASK_MAX_RETRIES it stays pending."""
    retries = int((request.request_dict or {}).get("retries") or 0)
    if retries >= SETTINGS.task_max_retries:
        logger.error("giving up on %s after %d retries: %s (re-enqueue the run to resume)", request.args, retries, error)
        return
    countdown = min(2 ** (retries + 1), RETRY["retry_backoff_max"])
    upscale.apply_async(request.args, task_id=request.id, countdown=countdown, retries=retries + 1,
                        ignore_result=True)


class _TaskEvents:
    """Per-image task events for Flower: celery-batches runs one batch but sends none of its own.

    Best effort: monitoring trouble is logged, never allowed to fail the batch.
    """

    def __init__(self, requests: list[SimpleRequest]) -> None:
        self.requests = requests
        self._stack = contextlib.ExitStack()
        self._dispatcher: Any = None

    def __enter__(self) -> _TaskEvents:
        hostname = self.requests[0].hostname if self.requests else None
        try:
            self._dispatcher = self._stack.enter_context(app.events.default_dispatcher(hostname=hostname))
        except Exception:  # noqa: BLE001
            logger.warning("task events unavailable for this batch", exc_info=True)
        self._send("task-started", self.requests)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._stack.close()
        except Exception:  # noqa: BLE001
            logger.warning("closing the event dispatcher failed", exc_info=True)

    def succeeded(self, requests: list[SimpleRequest], result: Any, runtime: float = 0.0) -> None:
        self._send("task-succeeded", requests, lambda r: {"result": repr(result(r)), "runtime": runtime})

    def failed(self, requests: list[SimpleRequest], error: BaseException) -> None:
        self._send("task-failed", requests, lambda r: {"exception": repr(error), "traceback": ""})

    def _send(self, event: str, requests: list[SimpleRequest], fields: Any = None) -> None:
        if self._dispatcher is None:
            return
        try:
            for request in requests:
                self._dispatcher.send(event, uuid=request.id, **(fields(request) if fields else {}))
        except Exception:  # noqa: BLE001
            logger.warning("could not send %s events", event, exc_info=True)


@app.task(name="workers.tasks.calibrate", **RETRY)
def calibrate(dataset_url: str, output_url: str | None = None) -> dict[str, Any]:
    """Calibrate on a dataset in object storage (streaming) and store the artifact, only where a task
    may write (never run state: a message can be crafted)."""
    destination = task_destination(dataset_url, output_url)
    calibration, where = calibrate_here(dataset_url, destination, stage_context().storages)
    return {"location": where, "pairs": calibration.n_pairs, "summary": calibration.summary()}


@app.task(name="workers.tasks.aggregate", **RETRY)
def aggregate(run_id: str, allow_partial: bool = False) -> dict[str, Any]:
    """Write the run's submission.csv, failures report and HTML report from the per-image objects
    (idempotent)."""
    result = aggregate_stage(stage_context(), run_id, allow_partial)
    if result.complete and not result.pending:
        # Storage holds the outcome; keep Redis at its baseline. Best effort: the summary exists, so
        # a retry would not come back here, and keys left behind expire with their TTL.
        try:
            tracker().forget(run_id)
        except redis.RedisError:
            logger.warning("run %s: could not drop its tracking keys; they expire on their own", run_id, exc_info=True)
    if result.complete:
        report_stage(stage_context(), run_id)
    return result.as_dict()



@app.task(name="workers.tasks.train", **RETRY)
def train(job: dict[str, Any]) -> dict[str, Any]:
    """One chunk of a training job (TRAIN_CHUNK_S at most), then the next chunk is enqueued: each
    message stays far inside the visibility timeout, and a redelivered one resumes from the saved state."""
    training = TrainJob.from_dict(job).checked()
    outcome = train_chunk(training, SETTINGS, stage_context().storages)
    if outcome.status == "continue":
        train.apply_async((dataclasses.replace(training, chunk=training.chunk + 1).to_dict(),))
    return outcome.as_dict()
