"""What each worker process holds (one stage context, one tracker, its identity and heartbeat) and
how a GPU worker starts.

Kept apart from :mod:`workers.runtime.app`, which only builds the app: the app module never needs
the tasks, and the tasks and this module import the app, so no import runs in a circle.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from celery import signals

from workers.errors import ConfigError
from workers.run.context import StageContext
from workers.runtime.app import CPU_QUEUE, GPU_QUEUE, SWEEP, SWEEP_QUEUE, app
from workers.runtime.claims import Claims
from workers.runtime.liveness import NODE_NAME, Heartbeat, this_process
from workers.runtime.tracking import QUICK_RETRY, RunTracker, outage_retry

logger = logging.getLogger(__name__)

SETTINGS = app.conf.lowlight_settings
POOL_CHILD_OOM_SCORE_ADJ = 500  # of -1000..1000: children go first, the main process last


@functools.cache
def stage_context() -> StageContext:
    """One per worker process: one storage client, one model."""
    return StageContext(SETTINGS)


@functools.cache
def tracker() -> RunTracker:
    return RunTracker.from_url(SETTINGS.broker_url_with_password, retry=outage_retry(SETTINGS.redis_outage_s))


_CLAIMS: dict[int, tuple[Claims, Heartbeat]] = {}
_CLAIMS_LOCK = threading.Lock()


def claims() -> Claims:
    """This process's claims on images, under its own identity; its heartbeat starts with the first
    call (a prefork child draws its own identity, after the fork)."""
    pid = os.getpid()
    with _CLAIMS_LOCK:
        if pid not in _CLAIMS:
            _CLAIMS.clear()  # the parent's, inherited across fork
            me = this_process()
            # Its own client, quick to give up: a beat during an outage must not hold a shutdown for minutes.
            client = RunTracker.from_url(SETTINGS.broker_url_with_password, retry=QUICK_RETRY).client
            mine = Claims(stage_context().storage, tracker(), me, SETTINGS)
            quick = RunTracker(client)
            beat = Heartbeat(client, me, SETTINGS.heartbeat_every_s, SETTINGS.stall_after_s,
                             lambda: mine.release_pending(quick))
            _CLAIMS[pid] = (mine, beat.start())
        return _CLAIMS[pid][0]


@signals.worker_process_shutdown.connect
@signals.worker_shutdown.connect
def _stop_heartbeat(**_: Any) -> None:
    """A clean exit: others know at once that this process holds nothing any more."""
    entry = _CLAIMS.get(os.getpid())
    if entry is not None:
        entry[1].stop()


@signals.worker_process_init.connect
def _expendable_pool_child(**_: Any) -> None:
    """A prefork pool child raises its own OOM score: when the container's memory limit is hit, the
    kernel then kills the child working on the image (Celery forks another and requeues the message,
    and the next delivery counts the death) rather than the worker's main process, which would take
    the whole worker down with every image it holds."""
    with contextlib.suppress(OSError):
        Path("/proc/self/oom_score_adj").write_text(str(POOL_CHILD_OOM_SCORE_ADJ))


@signals.celeryd_after_setup.connect
def _name_and_queues(sender: str, instance: Any, **_: Any) -> None:
    """Holds name the Celery node ("gpu@host-2"); CPU workers also read the sweep's own queue."""
    NODE_NAME["value"] = sender
    if CPU_QUEUE in consumed_queues(instance):
        instance.app.amqp.queues.select_add(SWEEP_QUEUE)


def consumed_queues(worker: Any) -> set[str]:
    consume_from = worker.app.amqp.queues.consume_from or worker.app.amqp.queues
    return set(consume_from)


@signals.worker_init.connect
def _configure_gpu_worker(sender: Any, **_: Any) -> None:
    """On a worker that serves the GPU queue: prefetch one batch, check the pool.

    No model is loaded here: which one a batch needs is the run's choice (the default preset runs
    the run's own checkpoint, ``seed`` the Hub model), so each is loaded by the first batch that
    needs it and kept (:class:`~workers.run.context.StageContext`). Loading at start-up would make
    every worker wait for, or crash-loop on, a model it may never run, and answer no health check
    meanwhile; a model that cannot load is reported on the run that needs it, as a configuration
    error the waiting producer stops on. What every model runs on (torch, spandrel) is imported
    here, though: a ready worker then holds the memory a working one does (a container's limit is
    judged against that, not found out by the first batch), and no batch waits for the import.
    """
    if GPU_QUEUE not in consumed_queues(sender):
        return
    settings = stage_context().settings
    pool = str(getattr(sender, "pool_cls", "")).lower()
    if "prefork" in pool and settings.device != "cpu":
        raise ConfigError("GPU workers must run with --pool=solo (or threads): CUDA does not survive fork")
    if "solo" in pool:
        sender.concurrency = 1  # the banner's default is the core count; solo runs one thing at a time
    # Batching needs up to one batch of messages in hand: this is "prefetch 1", counted in batches.
    sender.prefetch_multiplier = max(sender.prefetch_multiplier, settings.gpu_batch_size)
    import_inference_runtime()
    logger.info("GPU worker configured (DEVICE=%s): models load when a batch first needs them", settings.device)


def import_inference_runtime() -> None:
    """Import torch and spandrel, or log why not: a worker without them still serves the runs that
    need no model, and a run that needs one reports the missing package as its configuration error."""
    try:
        importlib.import_module("workers.ops.upscale")  # torch
        importlib.import_module("spandrel")
    except ImportError as exc:
        logger.warning("no inference runtime in this worker (%s): runs that need a model will fail", exc)


@signals.worker_ready.connect
def _start_sweeper(sender: Any, **_: Any) -> None:
    """CPU workers run the recovery sweep's timer (see :mod:`workers.runtime.sweep` for why not beat)."""
    if CPU_QUEUE in consumed_queues(sender):
        start_sweeper(sender.hostname)


def start_sweeper(holder: str) -> threading.Thread:
    """A daemon thread that, every sweep period, takes the cluster-wide sweep lease if it is free and
    sends one sweep task. Trouble (Redis down) is logged and the timer goes on."""

    def loop() -> None:
        every = SETTINGS.sweep_every_s
        while True:
            time.sleep(every)
            try:
                if tracker().lease("sweep", holder, every * 0.9):
                    # A sweep not started within its period is dropped: the next one does its work.
                    app.send_task(SWEEP, ignore_result=True, expires=every)
            except Exception:  # a timer must outlive any outage
                logger.warning("could not send the recovery sweep this time", exc_info=True)

    thread = threading.Thread(target=loop, name="recovery-sweep", daemon=True)
    thread.start()
    return thread
