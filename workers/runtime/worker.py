"""What each worker process holds (one stage context, one tracker) and how a GPU worker starts.

Kept apart from :mod:`workers.runtime.app`, which only builds the app: the app module never needs
the tasks, and the tasks and this module import the app, so no import runs in a circle.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from typing import Any

from celery import signals

from workers.errors import ConfigError
from workers.run.context import StageContext
from workers.runtime.app import CPU_QUEUE, GPU_QUEUE, SWEEP, app
from workers.runtime.tracking import RunTracker

logger = logging.getLogger(__name__)

SETTINGS = app.conf.lowlight_settings


@functools.cache
def stage_context() -> StageContext:
    """One per worker process: one storage client, one model."""
    return StageContext(SETTINGS)


@functools.cache
def tracker() -> RunTracker:
    return RunTracker.from_url(SETTINGS.broker_url_with_password)


def consumed_queues(worker: Any) -> set[str]:
    consume_from = worker.app.amqp.queues.consume_from or worker.app.amqp.queues
    return set(consume_from)


@signals.worker_init.connect
def _configure_gpu_worker(sender: Any, **_: Any) -> None:
    """On a worker that serves the GPU queue: prefetch one batch, check the pool, load the model."""
    if GPU_QUEUE not in consumed_queues(sender):
        return
    ctx = stage_context()
    pool = str(getattr(sender, "pool_cls", "")).lower()
    if "prefork" in pool and ctx.settings.device != "cpu":
        raise ConfigError("GPU workers must run with --pool=solo (or threads): CUDA does not survive fork")
    if "solo" in pool:
        sender.concurrency = 1  # the banner's default is the core count; solo runs one thing at a time
    # Batching needs up to one batch of messages in hand: this is "prefetch 1", counted in batches.
    sender.prefetch_multiplier = max(sender.prefetch_multiplier, ctx.settings.gpu_batch_size)
    ctx.warm_up()
    model = ctx.upscaler().describe()
    logger.info("GPU worker ready: model %s on %s", model["model"], model["device"])


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
                    app.send_task(SWEEP, ignore_result=True)
            except Exception:  # noqa: BLE001 - a timer must outlive any outage
                logger.warning("could not send the recovery sweep this time", exc_info=True)

    thread = threading.Thread(target=loop, name="recovery-sweep", daemon=True)
    thread.start()
    return thread
