"""workers.runtime.batching: the GPU task's celery-batches adapter, without a worker.

The real Strategy, handle and flush run against kombu's real QoS; celery-batches' own buffering
is replaced by a stand-in that only buffers, and the stage itself is not run.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from celery_batches import Batches
from kombu.common import QoS

INITIAL = 8  # GPU_BATCH_SIZE x concurrency 1


class Timer:
    def call_repeatedly(self, *_: object) -> SimpleNamespace:
        return SimpleNamespace(cancel=lambda: None)


@pytest.fixture
def upscale(monkeypatch):
    from workers.runtime.tasks import upscale as proxy

    task = proxy._get_current_object()

    def buffering_strategy(self, task, app, consumer):  # celery-batches' shape: a handler that buffers
        return lambda message, *rest, **kw: self._buffer.put(SimpleNamespace(eta=message.headers.get("eta")))

    monkeypatch.setattr(Batches, "Strategy", buffering_strategy)
    monkeypatch.setattr(Batches, "flush", lambda self, requests: None)
    for attribute in ("_consumer", "_eta_qos", "_eta_taken", "_tref"):
        monkeypatch.setattr(task, attribute, getattr(task, attribute))
    yield task
    while not task._buffer.empty():
        task._buffer.get_nowait()


def connect(task, consumer) -> tuple:
    """What Celery does on each (re)connection: rebuild the strategies, then make a fresh QoS."""
    handle = task.Strategy(task, task.app, consumer)
    consumer.qos = QoS(lambda prefetch_count: None, INITIAL)
    return handle, consumer.qos


def deliver(handle, eta: str | None) -> None:
    handle(SimpleNamespace(headers={"eta": eta} if eta else {}), None, None, None, set())


def run_buffered(task) -> None:
    task.flush([task._buffer.get_nowait() for _ in range(task._buffer.qsize())])


def test_messages_held_for_their_eta_take_prefetch_slots_and_a_batch_gives_them_back(upscale):
    """Celery builds the strategies before it creates the consumer's QoS: the count is read when a
    message comes and when the batch runs, not captured with the strategy (it is None then)."""
    consumer = SimpleNamespace(qos=None, timer=Timer())
    handle, qos = connect(upscale, consumer)
    for eta in ("2030-01-01T00:00:00+00:00", None, "2030-01-01T00:00:01+00:00"):
        deliver(handle, eta)
    assert qos.value == INITIAL + 2
    run_buffered(upscale)
    assert qos.value == INITIAL


def test_eta_messages_buffered_across_a_reconnection_leave_the_new_prefetch_count_whole(upscale):
    """Seven retries wait for their ETA when the broker connection drops: the new connection's QoS
    never counted them, so running them must not lower it (kombu clamps at 1: the worker would then
    take one message at a time, batches of one, until the next reconnection)."""
    consumer = SimpleNamespace(qos=None, timer=Timer())
    handle, before = connect(upscale, consumer)
    for _ in range(7):
        deliver(handle, "2030-01-01T00:00:00+00:00")
    assert before.value == INITIAL + 7
    handle, after = connect(upscale, consumer)
    deliver(handle, "2030-01-01T00:00:02+00:00")  # one more retry, counted on the new QoS
    assert after.value == INITIAL + 1
    run_buffered(upscale)
    assert after.value == INITIAL
