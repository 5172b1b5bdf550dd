"""Task events for the batched GPU task, which celery-batches runs without any: Flower and
``/metrics`` show every image's task (received, started, succeeded or failed) with its run id and
name all the same."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from celery import signals
from celery_batches import SimpleRequest

from workers.runtime.app import UPSCALE, app

logger = logging.getLogger(__name__)


@signals.task_received.connect
def _announce_batched_request(sender: Any, request: Any, **_: Any) -> None:
    """celery-batches buffers upscale messages without the task-received event Celery's default
    strategy sends; send it, so Flower shows when each image reached the GPU worker."""
    if request.name != UPSCALE or not getattr(sender, "event_dispatcher", None):
        return
    sender.event_dispatcher.send(
        "task-received",
        uuid=request.id,
        name=request.name,
        args=request.argsrepr,
        kwargs=request.kwargsrepr,
        root_id=request.root_id,
        parent_id=request.parent_id,
        retries=(request.request_dict or {}).get("retries", 0),
    )


class TaskEvents:
    """Per-image task events for Flower: celery-batches runs one batch but sends none of its own.

    Best effort: monitoring trouble is logged, never allowed to fail the batch.
    """

    def __init__(self, requests: list[SimpleRequest]) -> None:
        self.requests = requests
        self._stack = contextlib.ExitStack()
        self._dispatcher: Any = None

    def __enter__(self) -> TaskEvents:
        hostname = self.requests[0].hostname if self.requests else None
        try:
            self._dispatcher = self._stack.enter_context(app.events.default_dispatcher(hostname=hostname))
        except Exception:
            logger.warning("task events unavailable for this batch", exc_info=True)
        self._send("task-started", self.requests)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._stack.close()
        except Exception:
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
        except Exception:
            logger.warning("could not send %s events", event, exc_info=True)
