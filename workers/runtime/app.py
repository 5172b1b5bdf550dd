"""The Celery application: queues, routing and reliability settings. No task logic lives here.

Start workers with::

    celery -A workers worker -Q cpu                 # NL-means: prefork, one process per core
    celery -A workers worker -Q gpu --pool=solo     # Real-ESRGAN: one process owns the GPU
    celery -A workers worker -Q train --pool=solo   # fine-tuning (`producer train`): one job per GPU

GPU workers use ``--pool=solo`` because CUDA does not survive ``fork()``: the prefork pool would
fork children from a parent that already holds the CUDA context (the model is loaded at start-up),
and every child would crash on its first kernel. One process per GPU also keeps the model in memory
exactly once; throughput comes from batching, not from more processes.
"""

from __future__ import annotations

import os

from celery import Celery
from kombu import Exchange, Queue

from workers.settings import Settings

CPU_QUEUE = "cpu"
GPU_QUEUE = "gpu"
TRAIN_QUEUE = "train"
SWEEP_QUEUE = "sweep"  # consumed by every CPU worker, whatever its -Q says (workers.runtime.worker)
QUEUES = (CPU_QUEUE, GPU_QUEUE, TRAIN_QUEUE, SWEEP_QUEUE)

# Task names are the message format: they stay put whatever module defines the tasks.
DENOISE, UPSCALE, AGGREGATE = "workers.tasks.denoise", "workers.tasks.upscale", "workers.tasks.aggregate"
CALIBRATE, TRAIN, SWEEP = "workers.tasks.calibrate", "workers.tasks.train", "workers.tasks.sweep"



def publish_retry_policy(budget_s: float) -> dict[str, float]:
    """Sending a task rides out a Redis outage of REDIS_OUTAGE_S (kombu reconnects with backoff 0.5,
    1, 1.5, ... capped at 3 s) instead of Celery's default of under 2 s: a denoise task handing its
    image to the GPU queue, a GPU task rescheduling one, or a producer enqueueing must not lose the
    message to an outage."""
    retries, waited = 0, 0.0
    while waited < budget_s:
        retries += 1
        waited += min(3.0, 0.5 * retries)
    return {"max_retries": retries, "interval_start": 0.5, "interval_step": 0.5, "interval_max": 3}

# Separate queues so one class of work can never starve the other: a flood of cheap denoise tasks
# must not sit in front of the GPU's work, GPU workers must never pick up CPU work, and a training
# job (minutes to hours on one GPU) must never sit in front of the upscale batches: it has its own
# queue and its own workers. The recovery sweep must never wait behind a backlog of a million
# denoise tasks either (sweeps would pile up, then run in a burst): it has its own queue, which the
# CPU workers read next to theirs, and each sweep message expires after one sweep period.
TASK_ROUTES = {
    DENOISE: {"queue": CPU_QUEUE},
    UPSCALE: {"queue": GPU_QUEUE},
    AGGREGATE: {"queue": CPU_QUEUE},
    CALIBRATE: {"queue": CPU_QUEUE},
    SWEEP: {"queue": SWEEP_QUEUE},
    TRAIN: {"queue": TRAIN_QUEUE},
}


def create_app(settings: Settings) -> Celery:
    """A configured app. Producers call this with their own settings; workers use :data:`app`."""
    broker = settings.broker_url_with_password or "redis://127.0.0.1:6379/0"
    app = Celery("workers", broker=broker, backend=broker, include=["workers.runtime.tasks"])
    transport_options = {
        # An unacknowledged task is handed to another worker after this long: it must exceed the
        # slowest task, or a healthy long task would run twice.
        "visibility_timeout": settings.visibility_timeout_s,
        "socket_timeout": 30,
        "socket_connect_timeout": 10,
        "retry_on_timeout": True,
    }
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],  # never pickle: a message can never execute code on a worker
        result_accept_content=["json"],
        # Each queue on its own direct exchange: sharing the default one would bind both queues to
        # the same routing key and deliver every message twice.
        task_queues=tuple(Queue(q, Exchange(q, type="direct"), routing_key=q) for q in QUEUES),
        task_default_queue=CPU_QUEUE,
        task_routes=TASK_ROUTES,
        # Redelivery instead of loss: acknowledge only after the work is stored, and put the task
        # back if the worker process dies mid-task.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # GPU workers raise this to one batch: workers.runtime.worker
        broker_transport_options=transport_options,
        result_backend_transport_options=transport_options,
        result_expires=settings.result_expires_s,
        result_extended=True,  # keep task name and args with results, for Flower and debugging
        task_track_started=True,
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_publish_retry_policy=publish_retry_policy(settings.redis_outage_s),
        broker_connection_timeout=10,  # one connection attempt; the policy above bounds the whole ride-out
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # survive a Redis restart: keep reconnecting
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=False,
    )
    app.conf.lowlight_settings = settings
    return app


def _worker_app() -> Celery:
    settings = Settings.from_env()
    # The `celery` command reads BROKER_URL itself and exports it as CELERY_BROKER_URL, which beats
    # any configured broker_url; point it at the URL with REDIS_PASSWORD filled in.
    if os.environ.get("CELERY_BROKER_URL") == settings.broker_url:
        os.environ["CELERY_BROKER_URL"] = settings.broker_url_with_password
    return create_app(settings)


app = _worker_app()
