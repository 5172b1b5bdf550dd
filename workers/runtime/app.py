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
QUEUES = (CPU_QUEUE, GPU_QUEUE, TRAIN_QUEUE)

# Separate queues so one class of work can never starve the other: a flood of cheap denoise tasks
# must not sit in front of the GPU's work, GPU workers must never pick up CPU work, and a training
# job (minutes to hours on one GPU) must never sit in front of the upscale batches: it has its own
# queue and its own workers.
TASK_ROUTES = {
    "workers.tasks.denoise": {"queue": CPU_QUEUE},
    "workers.tasks.upscale": {"queue": GPU_QUEUE},
    "workers.tasks.aggregate": {"queue": CPU_QUEUE},
    "workers.tasks.calibrate": {"queue": CPU_QUEUE},
    "workers.tasks.train": {"queue": TRAIN_QUEUE},
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
        # Sending a task rides out a Redis restart as the run tracker does (about 20 s), instead of
        # Celery's default of under 2 s: a denoise task handing its image to the GPU queue, or a
        # producer enqueueing, must not lose the message to a brief outage.
        task_publish_retry_policy={"max_retries": 15, "interval_start": 0.2, "interval_step": 0.4, "interval_max": 2},
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
