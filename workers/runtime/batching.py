"""celery-batches, adapted: what the GPU task's micro-batching needs beyond the library (its flush
timer across broker reconnections, prefetch slots for messages held until their ETA)."""

from __future__ import annotations

import logging
from typing import Any

from celery_batches import Batches

logger = logging.getLogger(__name__)


class ReconnectSafeBatches(Batches):
    """celery-batches, safe across broker reconnections.

    celery-batches arms its flush timer on the first buffered message and keeps the handle until a
    flush finds the buffer empty. Celery clears the event loop's timers whenever the broker
    connection is lost, so after a reconnect that handle points at a timer that is gone: a GPU
    worker holding fewer than GPU_BATCH_SIZE messages would never run them, and the run would wait
    for the recovery sweep. Celery rebuilds every task's strategy on each (re)connection; here that
    also arms a fresh timer for what is still buffered. Those messages are run, not dropped: their
    redelivery could take a whole visibility timeout. Their acknowledgement goes to the dead
    channel and is lost, as for any acks_late task that runs across a reconnect, so the broker
    delivers them once more after the visibility timeout, and the stages skip the finished work.

    Messages with an ETA (retries sent with a countdown) wait in celery-batches' buffer, where they
    would hold prefetch slots until their ETA: a few rescheduled images would stall the worker's
    intake for up to BACKOFF_MAX_S. Celery's own strategy raises the prefetch count for each message it holds
    for an ETA and lowers it when the message runs; this does the same, and gives back only what it
    took from the QoS it gives back to: Celery makes a fresh QoS, at the initial count, on every
    (re)connection, so messages buffered before a reconnection lower nothing when they run (their
    slots went with the old QoS).
    """

    abstract = True
    # The consumer whose prefetch count ETA messages raise. Its QoS is read when a message comes or a
    # batch runs: Celery builds the strategies before it creates the QoS.
    _consumer: Any = None
    # The QoS the buffered ETA messages raised, and by how many: what a batch may give back to it.
    _eta_qos: Any = None
    _eta_taken = 0
    _tref: Any  # celery-batches' flush timer handle (set in its __init__)

    def Strategy(self, task: Any, app: Any, consumer: Any) -> Any:
        handler = super().Strategy(task, app, consumer)
        self._consumer = consumer
        if self._tref is not None:
            self._tref.cancel()
            self._tref = None
        buffered = self._buffer.qsize() + self._pending.qsize()
        if buffered:
            self._tref = consumer.timer.call_repeatedly(self.flush_interval, self._do_flush)
            logger.warning(
                "broker connection restarted: flushing %d buffered %s messages on a new timer", buffered, self.name
            )

        def handle(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **kw: Any) -> None:
            if (message.headers or {}).get("eta"):
                self._take_slot(consumer.qos)
            handler(message, body, ack, reject, callbacks, **kw)

        return handle

    def _take_slot(self, qos: Any) -> None:
        if qos is not self._eta_qos:
            self._eta_qos, self._eta_taken = qos, 0
        qos.increment_eventually()
        self._eta_taken += 1

    def flush(self, requests: list[Any]) -> Any:
        held_for_eta = sum(1 for request in requests if request.eta)
        qos = getattr(self._consumer, "qos", None)
        if qos is not None and qos is self._eta_qos and min(held_for_eta, self._eta_taken):
            give_back = min(held_for_eta, self._eta_taken)
            qos.decrement_eventually(give_back)
            self._eta_taken -= give_back
        return super().flush(requests)
