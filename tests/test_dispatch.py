"""Handing a run to the workers, against a real Redis and a local store."""

from __future__ import annotations

import pytest

from producer.dispatch import enqueue_plan
from tests.helpers.images import write_images
from tests.helpers.runs import make_run
from workers.io.storage import LocalStorage
from workers.run.keys import RunKeys
from workers.run.registry import active_key
from workers.run.remaining import plan_remaining
from workers.runtime.tracking import RunTracker
from workers.settings import Settings

pytestmark = pytest.mark.integration


class Recording(LocalStorage):
    """A local store that remembers the order of its writes and deletes."""

    def __init__(self, root) -> None:
        super().__init__(root)
        self.calls: list[tuple[str, str]] = []

    def put(self, key: str, data: bytes) -> None:
        self.calls.append(("put", key))
        super().put(key, data)

    def delete(self, key: str) -> None:
        self.calls.append(("delete", key))
        super().delete(key)


def test_a_stale_summary_is_gone_before_the_run_is_registered(redis_server, tmp_path):
    """A sweep between the two could take the old summary for this start's outcome and unregister it."""
    client = redis_server.client(db=12)
    client.flushdb()
    settings = Settings(broker_url=f"redis://{redis_server.host}:{redis_server.port}/12",
                        redis_password=redis_server.password)
    storage = Recording(tmp_path / "store")
    names = write_images(tmp_path / "in", 2)
    manifest = make_run(storage, tmp_path / "in", names)
    storage.put(RunKeys("r1").summary, b'{"pending": 0}')
    storage.calls.clear()
    enqueue_plan(settings, storage, plan_remaining(storage, manifest), RunTracker(client))
    assert storage.calls.index(("delete", RunKeys("r1").summary)) < storage.calls.index(("put", active_key("r1")))
    assert client.llen("cpu") == 2
