"""The recovery sweep as a plain function: real Redis and a local store, no worker; the messages it
sends are read back from the queues, and messages delivered to a worker are put in kombu's
``unacked`` hash the way its Redis transport does."""

from __future__ import annotations

import base64
import json
import time

import pytest

from tests.helpers.images import write_images
from tests.helpers.runs import make_run
from workers.io.storage import LocalStorage
from workers.run.attempts import read_attempts
from workers.run.keys import RunKeys
from workers.run.manifest import load_manifest
from workers.run.registry import active_runs, cancel_registered, register
from workers.run.remaining import plan_remaining
from workers.runtime.app import create_app
from workers.runtime.claims import Claims
from workers.runtime.enqueue import send_plan
from workers.runtime.holds import new_hold
from workers.runtime.liveness import Holder, heartbeat_key, this_process
from workers.runtime.sweep import aggregation_grace_s, sweep
from workers.runtime.tracking import RunTracker
from workers.settings import Settings

pytestmark = pytest.mark.integration

STALL = 60


@pytest.fixture
def world(redis_server, tmp_path):
    client = redis_server.client(db=14)
    client.flushdb()
    settings = Settings(broker_url=f"redis://{redis_server.host}:{redis_server.port}/14",
                        redis_password=redis_server.password, stall_after_s=STALL)
    storage = LocalStorage(tmp_path / "store")
    names = write_images(tmp_path / "in", 3)
    make_run(storage, tmp_path / "in", names)
    register(storage, "r1", 3)
    tracker = RunTracker(client)
    return tracker, storage, create_app(settings), client, names, Claims(storage, tracker, this_process(), settings)


def queued(client, queue: str) -> list[tuple]:
    """The positional arguments of every message waiting in ``queue`` (kombu: base64 JSON bodies)."""
    messages = [json.loads(raw) for raw in client.lrange(queue, 0, -1)]
    return [tuple(json.loads(base64.b64decode(m["body"]))[0]) for m in messages]


def deliver(client, queue: str) -> tuple[bytes, str]:
    """Take the next message of ``queue`` as kombu's Redis transport does for a worker (into the
    ``unacked`` hash, by delivery tag); its (tag, task id)."""
    raw = client.rpop(queue)
    message = json.loads(raw)
    tag = message["properties"]["delivery_tag"]
    info = message["properties"]["delivery_info"]
    client.zadd("unacked_index", {tag: time.time()})
    client.hset("unacked", tag, json.dumps([message, info["exchange"], info["routing_key"]]))
    return tag.encode(), message["headers"]["id"]


def gone_process() -> Holder:
    """A worker process on another machine whose heartbeat has expired."""
    return Holder("deadbeef00000000", "gpu@host-2", "another-machine", 4242, "1")


def start(tracker, storage, app, run_id="r1"):
    plan = plan_remaining(storage, load_manifest(storage, run_id))
    tracker.start(run_id, len(plan.manifest.names))
    send_plan(app, plan)
    return plan


def later(seconds: float = STALL + 1) -> float:
    return time.time() + seconds


def test_a_run_redis_forgot_is_rebuilt_and_only_what_has_no_message_is_sent(world):
    tracker, storage, app, client, names, claims = world
    storage.put(RunKeys("r1").row(names[0]), b"gt_00001,1\n")  # one image already done
    send_plan(app, plan_remaining(storage, load_manifest(storage, "r1")).only([names[1]]))  # one still queued
    report = sweep(claims, app, STALL, lease_s=0)
    assert report.rebuilt == ["r1"] and report.reenqueued == {"r1": 1}
    assert tracker.counts("r1") == (1, 3)
    assert sorted(queued(client, "cpu")) == [("r1", names[1]), ("r1", names[2])]


def test_a_backlog_behind_other_runs_is_never_sent_twice(world, tmp_path):
    """Queued images only wait their turn: after several stall periods each still has one message."""
    tracker, storage, app, client, names, claims = world
    make_run(storage, tmp_path / "in", names, run_id="r0")
    register(storage, "r0", 3)
    start(tracker, storage, app, "r0")  # the backlog in front
    start(tracker, storage, app)
    for period in range(1, 4):
        report = sweep(claims, app, STALL, now=later(period * (STALL + 1)), lease_s=0)
        assert report.reenqueued == {"r0": 0, "r1": 0}
    assert sorted(queued(client, "cpu")) == sorted([("r0", n) for n in names] + [("r1", n) for n in names])


def test_lost_messages_are_sent_again_once_the_run_stalls_and_only_once(world):
    tracker, storage, app, client, names, claims = world
    tracker.start("r1", 3)  # registered and started, but its messages never reached the queue
    assert sweep(claims, app, STALL, lease_s=0).reenqueued == {}  # fresh: not stalled
    assert sweep(claims, app, STALL, now=later(), lease_s=0).reenqueued == {"r1": 3}
    assert sweep(claims, app, STALL, now=later(2 * (STALL + 1)), lease_s=0).reenqueued == {"r1": 0}
    assert sorted(queued(client, "cpu")) == [("r1", n) for n in names]
    assert tracker.recovery("r1")["stalls"] == 2


def test_a_delivered_message_of_a_live_worker_is_not_sent_again(world):
    tracker, storage, app, client, names, claims = world
    start(tracker, storage, app)
    tracker.touch("r1", time.time() - STALL - 1)  # the run stalled
    deliver(client, "cpu")  # a worker took it just now and has not started it yet
    assert sweep(claims, app, STALL, lease_s=0).reenqueued == {"r1": 0}
    assert len(queued(client, "cpu")) == 2 and client.hlen("unacked") == 1


def test_a_delivery_nobody_started_within_the_stall_period_is_handed_back_not_sent_twice(world):
    """A worker's connection dropped while Redis was down: kombu could not put its prefetched message
    back, and it would wait in the unacknowledged hash for the whole visibility timeout."""
    tracker, storage, app, client, names, claims = world
    start(tracker, storage, app)
    tag, _ = deliver(client, "cpu")
    report = sweep(claims, app, STALL, now=later(), lease_s=0)
    assert report.restored == {"r1": 1} and report.reenqueued == {"r1": 0}
    assert client.hlen("unacked") == 0 and sorted(queued(client, "cpu")) == [("r1", n) for n in names]


def test_a_retry_waiting_for_its_eta_is_not_handed_back_before_it_is_due(world):
    tracker, storage, app, client, names, claims = world
    plan = plan_remaining(storage, load_manifest(storage, "r1"))
    tracker.start("r1", 3)
    app.send_task("workers.tasks.denoise", ("r1", names[0]), countdown=2 * STALL, ignore_result=True)
    deliver(client, "cpu")  # held by the worker's timer until its ETA
    assert sweep(claims, app, STALL, now=later(), lease_s=0).restored == {}
    assert client.hlen("unacked") == 1 and plan.has_work


def test_a_live_workers_hold_that_outlived_its_message_is_abandoned_and_its_image_sent_again(world):
    """An outage longer than the tracker's retries: the worker's release was lost and its message
    acknowledged (or its retry dropped). The hold is old and its image has no message anywhere: it
    is sent again under the hold's task id, and that delivery's claim takes the image over."""
    tracker, storage, app, client, names, claims = world
    tracker.start("r1", 3)
    live = Holder("cafe000000000000", "gpu@host-3", "another-machine", 7, "1")
    client.set(heartbeat_key(live.token), "{}", ex=24 * 3600)
    hold = new_hold(names[0], "denoise", "task-x", live)
    tracker.claim("r1", "denoise", live.token, {names[0]: hold})
    send_plan(app, plan_remaining(storage, load_manifest(storage, "r1")).only(names[1:]))  # the others are queued
    assert sweep(claims, app, STALL, now=later(STALL / 2), lease_s=0).reenqueued == {}  # not stalled yet
    report = sweep(claims, app, STALL, now=later(), lease_s=0)
    assert report.reenqueued == {"r1": 1}
    messages = [json.loads(raw) for raw in client.lrange("cpu", 0, -1)]
    assert [m["headers"]["id"] for m in messages if m["headers"]["argsrepr"] == repr(("r1", names[0]))] == ["task-x"]
    assert sweep(claims, app, STALL, now=later(2 * (STALL + 1)), lease_s=0).reenqueued == {"r1": 0}  # queued now
    other = Claims(storage, tracker, this_process(), claims.settings)
    assert other.claim("r1", "denoise", [(names[0], "task-x")]).images[0].verdict == "go"


def test_a_dead_holder_is_buried_its_deaths_counted_and_its_message_handed_back_at_once(world):
    tracker, storage, app, client, names, claims = world
    start(tracker, storage, app)
    tag, task_id = deliver(client, "cpu")
    name = names[0]  # sent first, so delivered first
    dead = new_hold(name, "denoise", task_id, gone_process()).computing(2)
    tracker.claim("r1", "denoise", dead.holder.token, {name: dead})
    live_holder = Holder("cafe000000000000", "gpu@host-3", "another-machine", 7, "1")
    client.set(heartbeat_key(live_holder.token), "{}", ex=60)
    tracker.claim("r1", "upscale", live_holder.token, {names[1]: new_hold(names[1], "upscale", "t2", live_holder)})

    report = sweep(claims, app, STALL, lease_s=0)  # no stall needed: the holder is gone
    assert report.deaths == {"r1": 1} and report.restored == {"r1": 1}
    assert client.hlen("unacked") == 0 and queued(client, "cpu")[-1] == ("r1", name)  # at the front
    assert set(tracker.holds("r1")) == {names[1]}  # the live worker keeps its image
    attempts = read_attempts(storage, "r1", name, "denoise")
    assert (attempts.deaths, attempts.alone, attempts.last_worker) == (1, True, "gpu@host-2")
    assert sweep(claims, app, STALL, lease_s=0).deaths == {}  # counted once


def test_a_finished_run_without_summary_is_aggregated_after_a_grace_that_grows_with_it(world):
    tracker, storage, app, client, names, claims = world
    for k, name in enumerate(names, 1):
        storage.put(RunKeys("r1").row(name), f"gt_{k:05d},1\n".encode())
    tracker.start("r1", 3)
    tracker.finish_many("r1", names)
    assert aggregation_grace_s(100_000, 600) > aggregation_grace_s(3, 600) >= 600
    assert sweep(claims, app, STALL, lease_s=0).aggregated == []
    report = sweep(claims, app, STALL, now=later(2 * STALL), lease_s=0)
    assert report.aggregated == ["r1"] and queued(client, "cpu") == [("r1",)]


def test_complete_and_deleted_runs_are_unregistered(world):
    tracker, storage, app, client, names, claims = world
    listing = load_manifest(storage, "r1").listing_digest
    tracker.start("r1", 3)
    storage.put(RunKeys("r1").summary, json.dumps({"pending": 0, "total": 3, "listing": "older"}).encode())
    assert sweep(claims, app, STALL, lease_s=0).completed == []  # a summary of an earlier listing
    storage.put(RunKeys("r1").summary, json.dumps({"pending": 0, "total": 3, "listing": listing}).encode())
    register(storage, "gone", 1)  # registered, then its manifest was deleted
    assert sweep(claims, app, STALL, lease_s=0).completed == ["r1"]
    assert list(active_runs(storage)) == []


def test_a_cancelled_run_stays_cancelled_when_redis_forgets_everything(world):
    tracker, storage, app, client, names, claims = world
    start(tracker, storage, app)
    cancel_registered(storage, "r1", 3)
    tracker.cancel("r1")
    client.flushdb()  # Redis restarted without persistence: queues, counts and the cancel flag gone
    report = sweep(claims, app, 0.001, now=later(), lease_s=0)
    assert report.rebuilt == [] and report.reenqueued == {}
    assert client.llen("cpu") == 0 and tracker.is_cancelled("r1")  # the flag is back, for the workers
    assert list(active_runs(storage)) == ["r1"]


def test_a_configuration_error_stops_the_sweep_from_sending_the_run_again(world):
    tracker, storage, app, client, names, claims = world
    tracker.start("r1", 3)
    tracker.flag_config_error("r1", "ConfigError: S3 refused ... (seen by cpu@a)")
    report = sweep(claims, app, STALL, now=later(), lease_s=0)
    assert report.blocked == ["r1"] and report.reenqueued == {} and client.llen("cpu") == 0
