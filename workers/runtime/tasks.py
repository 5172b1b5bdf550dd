"""Celery tasks: thin shells that take ids, call one stage function and report what happened.

Messages carry a run id and an input name, never pixels. Every stage skips work whose output
exists, so a redelivered or duplicated message is harmless.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import redis
from billiard.exceptions import WorkerLostError
from celery.exceptions import Reject, Retry
from celery.worker.request import Request
from celery_batches import SimpleRequest

from workers.errors import ConfigError, DeviceLostError, RunNotFoundError, TransientError
from workers.report import report_stage
from workers.run.aggregate import aggregate_stage
from workers.run.attempts import WORKER_DEATHS, describe_error
from workers.run.policy import Decision, decide, is_transient
from workers.run.registry import unregister
from workers.run.stages import denoise_stage, record_failure, upscale_stage
from workers.runtime.app import AGGREGATE, CALIBRATE, DENOISE, SWEEP, TRAIN, UPSCALE, app
from workers.runtime.batching import ReconnectSafeBatches
from workers.runtime.claims import Claimed, report_config_error
from workers.runtime.events import TaskEvents
from workers.runtime.liveness import Holder, alive
from workers.runtime.sweep import sweep as run_sweep
from workers.runtime.tracking import OUTAGE_ERRORS
from workers.runtime.worker import SETTINGS, claims, stage_context, tracker
from workers.training.calibrate import calibrate_here, task_destination
from workers.training.chunks import chunk_failed, train_chunk
from workers.training.job import TrainJob

logger = logging.getLogger(__name__)

# Redis trouble outlasting the tracker's own retries is as transient as a storage outage. Every task
# asks the one failure policy (workers.run.policy) what an error means: the per-image tasks publish
# their retries by hand (retry_or_fail, _reschedule), because an image must end recorded as failed
# and a retry must survive an outage; the run-level tasks retry through Celery (retry_run_task).
TRANSIENT: tuple[type[BaseException], ...] = (TransientError, *OUTAGE_ERRORS)


def finish_image(run_id: str, name: str, token: str = "") -> None:
    """Record that ``name`` is finished and release ``token``'s hold on it; the call that completes
    the run enqueues its aggregation.

    If that publish is lost anyway (an outage longer than its budget), the sweep aggregates the run
    once every image has been finished for the grace period.
    """
    if tracker().finish(run_id, name, token):
        logger.info("run %s: last image finished, aggregating", run_id)
        aggregate.apply_async((run_id,))


def hand_over(task: Any, run_id: str, name: str, token: str) -> None:
    """Release this process's hold on the image and send it to the GPU queue. Released first: a GPU
    worker may claim it the instant it is sent. A publish that fails even after its long retry
    budget puts the message back instead of acknowledging it: an image is never dropped between two
    stages."""
    with contextlib.suppress(*OUTAGE_ERRORS):
        tracker().touch(run_id, release=(name, token))  # the image moves on: progress, for the sweep
    try:
        upscale.apply_async((run_id, name), ignore_result=True)
    except OUTAGE_ERRORS as exc:
        logger.error("run %s: %s could not be handed to the GPU queue (%s); the message is requeued", run_id, name, exc)
        raise Reject(exc, requeue=True) from exc


def _release(run_id: str, name: str) -> None:
    """Best effort: a release an outage stops is tried again with each heartbeat."""
    try:
        claims().release(run_id, [name])
    except OUTAGE_ERRORS:
        logger.warning("run %s: could not release %s; retried with the heartbeat", run_id, name)


def fail_and_finish(stage: str, run_id: str, name: str, reason: str, token: str, kind: str = "") -> dict[str, Any]:
    """Record the image as failed with ``reason`` and count it finished: its run still completes,
    and ``producer enqueue --retry-failed`` tries it again."""
    outcome = record_failure(stage_context(), run_id, name, stage, reason, kind)
    finish_image(run_id, name, token)
    return outcome.as_dict()


def publish_retry(task: Any, run_id: str, name: str, task_id: str, retries: int, countdown: int) -> None:
    """Send the image's next attempt (same task id, ``retries + 1``) with the long publish budget.

    Raises:
        kombu.exceptions.OperationalError: the broker stayed unreachable for the whole budget.
    """
    task.apply_async((run_id, name), task_id=task_id, countdown=countdown, retries=retries + 1, ignore_result=True)


def image_decision(stage: str, run_id: str, name: str, error: BaseException, retries: int, batch: int = 1) -> Decision:
    """The failure policy's word on an image's error, an unexpected one counted first in the image's
    attempts record (with the ``batch`` of images it hit).

    Raises:
        TransientError, redis errors: the count could not be stored (storage or Redis down).
        ConfigError: storage refuses it (reported once, loudly, by the claims).
    """
    errors = 0
    if not is_transient(error, TRANSIENT):
        attempts = claims().record_error(run_id, name, stage, error, batch)
        errors = attempts.errors
        logger.error("run %s: %s at %s: %s (%d of %d)", run_id, name, stage, attempts.last_error, attempts.errors,
                     SETTINGS.task_max_errors, exc_info=error if attempts.errors == 1 else None)
    return decide(error, retries=retries, errors=errors, settings=SETTINGS, stage=stage, transient=TRANSIENT)


def retry_or_fail(task: Any, stage: str, run_id: str, name: str, error: BaseException, token: str) -> dict[str, Any]:
    """What the failure policy says: the image retried later, or recorded as failed (the run
    completes; ``--retry-failed`` resumes it). The retry is published here, with the long publish
    budget; if even that fails, the message is requeued rather than acknowledged (Celery's own
    ``retry()`` rejects it for good)."""
    retries = task.request.retries or 0
    try:
        decision = image_decision(stage, run_id, name, error, retries)
    except TRANSIENT as exc:  # the count could not be stored: retry as for any outage
        return retry_or_fail(task, stage, run_id, name, exc, token)
    except Exception as exc:  # storage refuses even the count (AccessDenied, full): the run waits
        logger.exception("run %s: could not record the error of %s; dropped until the run is enqueued again",
                         run_id, name)
        if isinstance(exc, ConfigError):  # flagged: the sweep leaves the run alone, the producer says why
            report_config_error(tracker(), run_id, exc, claims().me.node)
        _release(run_id, name)
        return {"name": name, "status": "unrecorded", "reason": str(error)}
    if decision.action == "fail":
        return fail_and_finish(stage, run_id, name, decision.reason, token)
    _release(run_id, name)
    try:
        publish_retry(task, run_id, name, task.request.id, retries, decision.countdown_s)
    except OUTAGE_ERRORS as exc:
        logger.error("run %s: the retry of %s could not be published (%s); the message is requeued", run_id, name, exc)
        raise Reject(exc, requeue=True) from exc
    raise Retry(exc=error, when=decision.countdown_s)


class LostChildAware(Request):
    """The request of a denoise message, in the worker's main process: when the pool child running
    it dies (an OOM kill), its hold is buried and the death counted here, before Celery requeues
    the message (``task_reject_on_worker_lost``) for any worker to take."""

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> Any:
        if isinstance(exc_info.exception, WorkerLostError) and self.worker_pid:
            try:
                run_id, name = image_arguments(self.args, self.kwargs)
                claims().bury_pool_child(run_id, name, self.worker_pid)
            except Exception:  # the next delivery or the sweep counts it instead
                logger.warning("could not record the death of pool child %s", self.worker_pid, exc_info=True)
        return super().on_failure(exc_info, send_failed_event, return_ok)


# Nobody reads a per-image result (Flower gets events): storing 10,000 of them would only fill Redis.
@app.task(name=DENOISE, bind=True, ignore_result=True, max_retries=SETTINGS.task_max_retries, Request=LostChildAware)
def denoise(self: Any, run_id: str, name: str) -> dict[str, Any]:
    """CPU stage for one image, then hand it to the GPU queue. Claimed first: a duplicate of work in
    progress is dropped, and an image whose workers kept dying is recorded as failed instead."""
    token = ""
    try:
        mine = claims()
        token = mine.me.token
        claim = mine.claim(run_id, "denoise", [(name, self.request.id)], computing=True)
        if claim.cancelled:
            return {"name": name, "status": "cancelled"}
        (image,) = claim.images
        if image.verdict == "elsewhere":
            return {"name": name, "status": "elsewhere", "reason": "a live worker is processing it"}
        if image.verdict == "fail":
            return fail_and_finish("denoise", run_id, name, image.attempts.death_reason(), token, WORKER_DEATHS)
        outcome = denoise_stage(stage_context(), run_id, name)
        if outcome.status == "denoised":
            hand_over(self, run_id, name, token)
        else:
            finish_image(run_id, name, token)
    except (Retry, Reject):
        raise
    except Exception as exc:  # every error ends: retried a bounded number of times, then recorded
        return retry_or_fail(self, "denoise", run_id, name, exc, token)
    return outcome.as_dict()


@app.task(name=UPSCALE, base=ReconnectSafeBatches, flush_every=SETTINGS.gpu_batch_size, flush_interval=SETTINGS.gpu_batch_wait_s)
def upscale(requests: list[SimpleRequest]) -> None:
    """GPU stage. celery-batches hands over the messages waiting on this worker (up to one batch);
    each run's images are claimed, then go through :func:`upscale_stage`, which batches same-size
    images and runs suspects (images whose worker died, or that failed unexpectedly, before) alone.

    celery-batches acknowledges every message once this returns, whatever happened, so nothing may
    escape: each image is finished, rescheduled or (after its retries) recorded as failed here, one
    image at a time, and a malformed message is logged and dropped alone. A reschedule that cannot
    be published even after its budget is logged, and the loop goes on; the recovery sweep sends
    that image again when its run stalls.
    """
    by_run: dict[str, list[tuple[SimpleRequest, str]]] = defaultdict(list)
    with TaskEvents(requests) as events:
        for request in requests:
            try:
                run_id, name = image_arguments(request.args, request.kwargs)
            except ValueError as exc:
                logger.error("dropping a malformed upscale message %s: %s", request.id, exc)
                events.failed([request], exc)
                continue
            by_run[run_id].append((request, name))
        runs = list(by_run.items())
        for index, (run_id, items) in enumerate(runs):
            try:
                _upscale_run(run_id, items, events)
            except DeviceLostError as exc:
                hand_back_and_leave([(r, n, rid) for rid, later in runs[index:] for r, n in later], exc, events)
                return
            except Exception as exc:  # see the docstring: reschedule, never drop
                logger.exception("run %s: upscale batch failed; rescheduling %d images", run_id, len(items))
                for request, name in items:
                    _reschedule(request, run_id, name, exc, len(items))
                events.failed([request for request, _ in items], exc)


def hand_back_and_leave(items: list[tuple[SimpleRequest, str, str]], error: DeviceLostError, events: TaskEvents
                        ) -> None:
    """The device's CUDA context is broken: every image of the batch goes back to the queue as it
    came (neither an error of the image nor a retry of it), and this worker shuts down warm so that
    its pod or container is replaced by one with a working device. Images already finished in this
    batch are skipped on their next delivery."""
    logger.critical("the device is lost (%s): handing %d images back and shutting this worker down", error, len(items))
    for request, name, run_id in items:
        _release(run_id, name)
        try:
            upscale.apply_async((run_id, name), task_id=request.id, retries=retries_of(request), ignore_result=True)
        except Exception:  # the sweep sends it again when the run stalls
            logger.exception("run %s: could not hand %s back; the sweep will", run_id, name)
    events.failed([request for request, _, _ in items], error)
    os.kill(os.getpid(), signal.SIGTERM)  # warm shutdown: this batch returns first, then the process exits


def retries_of(request: SimpleRequest) -> int:
    """How many times this message's image was rescheduled before (its ``retries`` field)."""
    return int((request.request_dict or {}).get("retries") or 0)


def image_arguments(args: Any, kwargs: Any) -> tuple[str, str]:
    """(run id, input name) of an image task's message.

    Raises:
        ValueError: not exactly two strings, or extra keyword arguments.
    """
    if kwargs or not isinstance(args, list | tuple) or len(args) != 2 or not all(isinstance(a, str) for a in args):
        raise ValueError(f"expected (run_id, name) strings, got args={args!r} kwargs={kwargs!r}")
    return args[0], args[1]


def _upscale_run(run_id: str, items: list[tuple[SimpleRequest, str]], events: TaskEvents) -> None:
    mine = claims()
    token = mine.me.token
    requests: dict[str, list[SimpleRequest]] = defaultdict(list)  # a name sent twice shares one outcome
    for request, name in items:
        requests[name].append(request)
    claim = mine.claim(run_id, "upscale", [(name, reqs[0].id) for name, reqs in requests.items()])
    if claim.cancelled:
        events.succeeded([r for reqs in requests.values() for r in reqs], lambda r: {"status": "cancelled"})
        return
    go = []
    for image in claim.images:
        if image.verdict == "elsewhere":
            events.succeeded(requests[image.name], lambda r: {"status": "elsewhere"})
        elif image.verdict == "fail":
            outcome = fail_and_finish("upscale", run_id, image.name, image.attempts.death_reason(), token,
                                      WORKER_DEATHS)
            events.succeeded(requests[image.name], lambda r, o=outcome: o)
        else:
            go.append(image)
    for group in isolate_suspects(go):
        _upscale_group(run_id, group, requests, events)


def isolate_suspects(images: list[Claimed]) -> list[list[Claimed]]:
    """The images nothing went wrong with, batched together first; then each suspect (its worker died,
    or it failed unexpectedly, before) alone, from load to store, fewest deaths first: its batch-mates
    finish on their next delivery, and a death from here on is charged to the culprit only."""
    healthy = [image for image in images if not image.attempts.suspect]
    suspects = sorted((image for image in images if image.attempts.suspect), key=lambda image: image.attempts.deaths)
    return ([healthy] if healthy else []) + [[image] for image in suspects]


def _upscale_group(run_id: str, group: list[Claimed], requests: dict[str, list[SimpleRequest]],
                   events: TaskEvents) -> None:
    """One call of the GPU stage on ``group``, its outcomes recorded before the next group starts."""
    mine, token = claims(), claims().me.token
    holds = {image.name: image.hold for image in group}
    marked: set[str] = set()

    def mark(computing: Sequence[str]) -> None:
        """Charge a death from now on to ``computing`` only (loading charges the whole group). A group
        that is one forward pass keeps the mark of its loading: no second round trip."""
        if marked == set(computing):
            return
        try:
            mine.computing(run_id, [holds[n] for n in computing], [h for n, h in holds.items() if n not in computing])
            marked.clear()
            marked.update(computing)
        except OUTAGE_ERRORS:  # a death now would not be charged to these images
            logger.warning("run %s: could not mark %d images as computing", run_id, len(computing))

    mark(list(holds))
    started = time.perf_counter()
    try:
        outcomes = upscale_stage(stage_context(), run_id, list(holds), on_pass=mark)
    except RunNotFoundError as exc:  # the run was deleted: nothing to do for these messages
        mine.release(run_id, list(holds))
        events.failed([r for name in holds for r in requests[name]], exc)
        return
    elapsed = time.perf_counter() - started
    for outcome in outcomes:
        reqs = requests[outcome.name]
        try:
            if outcome.status == "retry":
                error = outcome.error or TransientError(outcome.reason)
                _reschedule(reqs[0], run_id, outcome.name, error, outcome.batch)
                events.failed(reqs, error)
            else:
                finish_image(run_id, outcome.name, token)
                events.succeeded(reqs, lambda r, o=outcome: o.as_dict(), runtime=elapsed)
        except OUTAGE_ERRORS as exc:  # Redis outlasted the tracker's retries: this image waits for the sweep
            logger.error("run %s: %s could not be recorded (%s); the sweep will pick it up", run_id, outcome.name, exc)
            mine.release_later(run_id, [outcome.name])


def _reschedule(request: SimpleRequest, run_id: str, name: str, error: BaseException, batch: int = 1) -> None:
    """Retry one image later or record it as failed, as the failure policy says (an unexpected error
    counted with the ``batch`` it hit).

    Never raises: a publish that fails even after its budget, or a Redis outage while giving up,
    is logged and leaves the image to the recovery sweep, so the other images of the batch go on.
    """
    retries = retries_of(request)
    token = claims().me.token
    try:
        decision = image_decision("upscale", run_id, name, error, retries, batch)
        if decision.action == "fail":
            fail_and_finish("upscale", run_id, name, decision.reason, token)
            return
        _release(run_id, name)
        publish_retry(upscale, run_id, name, request.id, retries, decision.countdown_s)
    except Exception:  # see the docstring
        logger.exception("run %s: could not reschedule %s; the sweep re-enqueues it when the run stalls", run_id, name)
        _release(run_id, name)


@app.task(name=CALIBRATE, bind=True, max_retries=SETTINGS.task_max_retries)
def calibrate(self: Any, dataset_url: str, output_url: str | None = None) -> dict[str, Any]:
    """Calibrate on a dataset in object storage (streaming) and store the artifact, only where a task
    may write (never run state: a message can be crafted). A configuration error reaches the
    producer waiting on the result at once; other errors are retried as the failure policy says."""
    try:
        destination = task_destination(dataset_url, output_url, SETTINGS)
        calibration, where = calibrate_here(dataset_url, destination, stage_context().storages)
    except Exception as exc:
        raise retry_run_task(self, exc, f"calibrating {dataset_url}", "calibrate", stops=True) from exc
    return {"location": where, "pairs": calibration.n_pairs, "summary": calibration.summary()}


def run_task_decision(task: Any, error: BaseException, stage: str, stops: bool = False) -> Decision:
    """The failure policy's word on a run-level task's error; each attempt is one unexpected error
    (these tasks keep no attempts record)."""
    retries = task.request.retries or 0
    errors = 0 if is_transient(error, TRANSIENT) else retries + 1
    return decide(error, retries=retries, errors=errors, settings=SETTINGS, stage=stage, transient=TRANSIENT,
                  stops=stops)


def retry_run_task(task: Any, error: BaseException, what: str, stage: str, stops: bool = False) -> Retry:
    """The retry of a run-level task, as the failure policy says; once it says fail (or stop), the
    error itself is raised, logged loudly once.

    Raises:
        the error: its retries are used up, or it is a configuration error someone waits to hear of.
    """
    decision = run_task_decision(task, error, stage, stops)
    if decision.action != "retry":
        logger.critical("%s failed for good after %d attempts: %s", what, (task.request.retries or 0) + 1,
                        describe_error(error))
        raise error
    if not is_transient(error, TRANSIENT):
        logger.error("%s failed (%s); retrying", what, describe_error(error), exc_info=error)
    return task.retry(exc=error, countdown=decision.countdown_s)


@app.task(name=AGGREGATE, bind=True, max_retries=SETTINGS.task_max_retries)
def aggregate(self: Any, run_id: str, allow_partial: bool = False) -> dict[str, Any]:
    """Write the run's submission.csv, failures report and HTML report from the per-image objects
    (idempotent). Every error ends: see :func:`retry_run_task` (the sweep asks again after its grace)."""
    try:
        return _aggregate(run_id, allow_partial)
    except Retry:
        raise
    except Exception as exc:  # bounded: retry_run_task
        raise retry_run_task(self, exc, f"aggregating run {run_id}", "aggregate") from exc


def _aggregate(run_id: str, allow_partial: bool) -> dict[str, Any]:
    epoch = _epoch(run_id)  # before aggregating: a start of the same run after this keeps its keys
    result = aggregate_stage(stage_context(), run_id, allow_partial)
    if result.complete and not result.pending:
        unregister(stage_context().storage, run_id)
        # Storage holds the outcome; keep Redis at its baseline. Best effort: the summary exists, so
        # a retry would not come back here, and keys left behind expire with their TTL.
        try:
            tracker().forget(run_id, epoch)
        except redis.RedisError:
            logger.warning("run %s: could not drop its tracking keys; they expire on their own", run_id, exc_info=True)
    if result.complete:
        report_stage(stage_context(), run_id)
    return result.as_dict()


def _epoch(run_id: str) -> str:
    try:
        return tracker().epoch(run_id)
    except redis.RedisError:
        return "unknown"  # matches no epoch: forget() then leaves the keys to their TTL


@app.task(name=SWEEP, ignore_result=False)
def sweep() -> dict[str, object]:
    """The recovery sweep (:mod:`workers.runtime.sweep`): workers send it on a timer, one per interval."""
    report = run_sweep(claims(), app, SETTINGS.stall_after_s, lease_s=SETTINGS.sweep_every_s * 0.9)
    return report.as_dict()


@app.task(name=TRAIN, bind=True, max_retries=SETTINGS.task_max_retries)
def train(self: Any, job: dict[str, Any]) -> dict[str, Any]:
    """One chunk of a training job (TRAIN_CHUNK_S at most), then the next chunk's message is sent:
    each message stays far inside the visibility timeout, and the chain is driven by the job's
    stored state (:func:`~workers.training.chunks.next_step`), so a message delivered twice neither
    trains twice nor ends the chain. Every error ends: a chunk that raises is retried (transient:
    TASK_MAX_RETRIES; a configuration error: never; anything else: TASK_MAX_ERRORS attempts) and
    then marks the job failed with the error, which ``producer train`` reports."""
    training = TrainJob.from_dict(job).checked(SETTINGS)
    storages = stage_context().storages
    me = claims().me
    try:
        redelivered = bool(self.request.retries) or bool((self.request.delivery_info or {}).get("redelivered"))
        outcome = train_chunk(training, self.request.id, SETTINGS, storages, json.loads(me.to_json()),
                              lambda holder: alive([Holder(**holder)], tracker().client)[holder["token"]], redelivered)
        if outcome.next_task is not None:
            following = dataclasses.replace(training, chunk=training.chunk + 1).to_dict()
            train.apply_async((following,), task_id=outcome.next_task)
    except Retry:
        raise
    except Exception as exc:  # bounded by the failure policy, and recorded where the producer looks
        decision = run_task_decision(self, exc, "train", stops=True)
        final = decision.action != "retry"
        chunk_failed(training, self.request.id, storages, describe_error(exc), final)
        if final:
            logger.critical("training job %s failed: %s", training.output_location(), describe_error(exc))
            raise
        raise self.retry(exc=exc, countdown=decision.countdown_s) from exc
    return outcome.as_dict()
