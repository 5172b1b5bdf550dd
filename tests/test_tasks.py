"""workers.runtime.tasks without a worker: the pieces that need no broker."""

from __future__ import annotations

from types import SimpleNamespace

from celery_batches import Batches


class CountingQoS:
    def __init__(self) -> None:
        self.value = 8

    def increment_eventually(self, n: int = 1) -> None:
        self.value += n

    def decrement_eventually(self, n: int = 1) -> None:
        self.value -= n


def test_a_batch_gives_back_the_prefetch_slots_its_eta_messages_took(monkeypatch):
    """Celery builds the task strategies before it creates the consumer's QoS: the count must be
    read when the batch runs, not captured when the strategy is built (it is None then)."""
    from workers.runtime.tasks import upscale as proxy

    upscale = proxy._get_current_object()
    monkeypatch.setattr(Batches, "flush", lambda self, requests: None)  # the stage itself is not under test
    consumer = SimpleNamespace(qos=None)
    monkeypatch.setattr(upscale, "_consumer", consumer)
    consumer.qos = qos = CountingQoS()  # created after the strategy, as Celery does
    upscale.flush([SimpleNamespace(eta="2026-12-05T10:00:00"), SimpleNamespace(eta=None),
                   SimpleNamespace(eta="2026-12-05T10:00:01")])
    assert qos.value == 6
