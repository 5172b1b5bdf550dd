"""What the broker holds for a run, read from a real Redis the way kombu's Redis transport stores it."""

from __future__ import annotations

import json
import time

import pytest

from tests.helpers.images import write_images
from tests.helpers.runs import make_run
from workers.io.storage import LocalStorage
from workers.run.manifest import load_manifest
from workers.run.remaining import plan_remaining
from workers.runtime import broker
from workers.runtime.app import create_app
from workers.runtime.broker import queued_images, restore, unacked_messages
from workers.runtime.enqueue import send_plan
from workers.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def world(redis_server, tmp_path):
    client = redis_server.client(db=11)
    client.flushdb()
    app = create_app(Settings(broker_url=f"redis://{redis_server.host}:{redis_server.port}/11",
                              redis_password=redis_server.password))
    storage = LocalStorage(tmp_path / "store")
    names = write_images(tmp_path / "in", 5)
    for run_id in ("r1", "r2", "r10"):
        make_run(storage, tmp_path / "in", names, run_id=run_id)
    return client, app, storage, names


def test_a_runs_queued_images_are_found_across_chunks_and_other_runs_are_filtered_out(world, monkeypatch):
    client, app, storage, names = world
    monkeypatch.setattr(broker, "CHUNK", 2)  # several filtered reads
    for run_id in ("r10", "r1", "r2"):
        send_plan(app, plan_remaining(storage, load_manifest(storage, run_id)))
    found = queued_images(client, ["cpu", "gpu"], ["r1"])
    assert found == {"r1": set(names)}  # "r10" shares a prefix with "r1": the quoted id tells them apart
    assert queued_images(client, ["cpu"], []) == {}


def test_a_delivered_message_is_found_with_when_and_is_handed_back_to_the_front(world):
    client, app, storage, names = world
    send_plan(app, plan_remaining(storage, load_manifest(storage, "r1")))
    raw = client.rpop("cpu")  # what kombu does for a worker: into the unacked hash, by delivery tag
    message = json.loads(raw)
    tag, info = message["properties"]["delivery_tag"], message["properties"]["delivery_info"]
    client.zadd("unacked_index", {tag: time.time()})
    client.hset("unacked", tag, json.dumps([message, info["exchange"], info["routing_key"]]))
    (delivery,) = unacked_messages(client)
    assert (delivery.message.run_id, delivery.message.name, delivery.tag) == ("r1", names[0], tag.encode())
    assert queued_images(client, ["cpu"], ["r1"]) == {"r1": set(names[1:])}  # delivered: no longer queued
    assert delivery.due == delivery.at and delivery.eta == 0.0  # no countdown: due when delivered
    restore(app, delivery.tag)
    assert not client.hlen("unacked") and json.loads(client.lindex("cpu", -1))["headers"]["id"] == message["headers"]["id"]
