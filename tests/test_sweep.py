"""The recovery sweep as a plain function: real Redis and a local store, no worker; the messages it
sends are read back from the queues."""

from __future__ import annotations

import base64
import json
import time

import pytest

from tests.fixtures import make_run, write_images
from workers.io.storage import LocalStorage
from workers.run.keys import RunKeys
from workers.run.manifest import load_manifest
from workers.run.registry import active_runs, register
from workers.runtime.app import create_app
from workers.runtime.sweep import aggregation_grace_s, sweep
from workers.runtime.tracking import RunTracker
from workers.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def world(redis_server, tmp_path):
    client = redis_server.client(db=14)
    client.flushdb()
    settings = Settings(broker_url=f"redis://{redis_server.host}:{redis_server.port}/14",
                        redis_password=redis_server.password)
    storage = LocalStorage(tmp_path / "store")
    names = write_images(tmp_path / "in", 3)
    make_run(storage, tmp_path / "in", names)
    register(storage, "r1", 3)
    return RunTracker(client), storage, create_app(settings), client, names


def queued(client, queue: str) -> list[tuple]:
    """The positional arguments of every message waiting in ``queue`` (kombu: base64 JSON bodies)."""
    messages = [json.loads(raw) for raw in client.lrange(queue, 0, -1)]
    return [tuple(json.loads(base64.b64decode(m["body"]))[0]) for m in messages]


def test_a_run_redis_forgot_is_rebuilt_from_storage_and_enqueued_again(world):
    tracker, storage, app, client, names = world
    storage.put(RunKeys("r1").row(names[0]), b"gt_00001,1\n")  # one image already done
    report = sweep(storage, tracker, app, stall_after_s=60)
    assert report.rebuilt == ["r1"] and report.reenqueued == {"r1": 2}
    assert tracker.counts("r1") == (1, 3)
    assert sorted(queued(client, "cpu")) == [("r1", names[1]), ("r1", names[2])]


def test_a_stalled_run_is_enqueued_again_and_waits_a_whole_stall_before_the_next(world):
    tracker, storage, app, client, names = world
    tracker.start("r1", 3)
    assert sweep(storage, tracker, app, stall_after_s=60).reenqueued == {}  # fresh: not stalled
    later = time.time() + 61
    assert sweep(storage, tracker, app, stall_after_s=60, now=later).reenqueued == {"r1": 3}
    assert sweep(storage, tracker, app, stall_after_s=60, now=later).reenqueued == {}  # progress restamped
    assert len(queued(client, "cpu")) == 3 and tracker.recovery("r1")["stalls"] == 1


def test_a_finished_run_without_summary_is_aggregated_after_a_grace_that_grows_with_it(world):
    tracker, storage, app, client, names = world
    for k, name in enumerate(names, 1):
        storage.put(RunKeys("r1").row(name), f"gt_{k:05d},1\n".encode())
    tracker.start("r1", 3)
    tracker.finish_many("r1", names)
    assert aggregation_grace_s(100_000, 600) > aggregation_grace_s(3, 600) >= 600
    assert sweep(storage, tracker, app, stall_after_s=60).aggregated == []
    report = sweep(storage, tracker, app, stall_after_s=60, now=time.time() + 120)
    assert report.aggregated == ["r1"] and queued(client, "cpu") == [("r1",)]


def test_complete_cancelled_and_deleted_runs_are_left_alone(world):
    tracker, storage, app, client, names = world
    listing = load_manifest(storage, "r1").listing_digest
    tracker.start("r1", 3)
    storage.put(RunKeys("r1").summary, json.dumps({"pending": 0, "total": 3, "listing": "older"}).encode())
    assert sweep(storage, tracker, app, stall_after_s=60).completed == []  # a summary of an earlier listing
    storage.put(RunKeys("r1").summary, json.dumps({"pending": 0, "total": 3, "listing": listing}).encode())
    assert sweep(storage, tracker, app, stall_after_s=60).completed == ["r1"]
    assert list(active_runs(storage)) == []
    register(storage, "gone", 1)  # registered, then its manifest was deleted
    register(storage, "r1", 3)
    storage.delete(RunKeys("r1").summary)
    tracker.start("r1", 3)
    tracker.cancel("r1")
    report = sweep(storage, tracker, app, stall_after_s=0, now=time.time() + 10)
    assert report.reenqueued == {} and list(active_runs(storage)) == ["r1"]
    assert client.llen("cpu") == 0
