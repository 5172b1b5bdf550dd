"""Claims on images in a real Redis: duplicates of work in progress are dropped, deaths are counted
once, in storage, and an image whose workers kept dying is failed at its next delivery."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from workers.errors import ConfigError
from workers.io.storage import LocalStorage
from workers.run.attempts import read_attempts
from workers.runtime.claims import Claims, reload_attempts
from workers.runtime.holds import new_hold
from workers.runtime.liveness import Holder, heartbeat_key, machine_id, process_start, this_process
from workers.runtime.tracking import RunTracker
from workers.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def world(redis_server, tmp_path):
    client = redis_server.client(db=13)
    client.flushdb()
    tracker = RunTracker(client)
    tracker.start("r1", 3)
    return LocalStorage(tmp_path / "store"), tracker, Settings(max_worker_deaths=3, task_max_errors=2)


def exited_process() -> Holder:
    """A process of this machine that has exited: known dead at once, no heartbeat to wait for."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return Holder("0123456789abcdef", "cpu@here", machine_id(), int(child.stdout), "1")


def holding(tracker, holder: Holder, name: str, batch: int) -> None:
    tracker.claim("r1", "upscale", holder.token, {name: new_hold(name, "upscale", "task-1", holder).computing(batch)})


def test_a_free_image_is_claimed_in_one_call_and_released_only_by_its_holder(world):
    storage, tracker, settings = world
    mine = Claims(storage, tracker, this_process(), settings)
    claim = mine.claim("r1", "denoise", [("a.png", "t1")], computing=True)
    assert [(c.name, c.verdict) for c in claim.images] == [("a.png", "go")]
    assert tracker.holds("r1")["a.png"][1].batch == 1
    tracker.release("r1", ["a.png"], "someone-else")
    assert "a.png" in tracker.holds("r1")
    mine.release("r1", ["a.png"])
    assert tracker.holds("r1") == {}


def test_a_live_workers_own_message_come_back_is_taken_over_not_dropped(world):
    """The holder published its retry (same task id) but its release was lost in an outage: the retry
    reaching another worker is the image's only message, and nobody else works on it."""
    storage, tracker, settings = world
    other = Holder("feedfeedfeedfeed", "gpu@host-2", "another-machine", 1, "1")
    tracker.client.set(heartbeat_key(other.token), "{}", ex=60)
    holding(tracker, other, "a.png", 4)
    image = Claims(storage, tracker, this_process(), settings).claim("r1", "upscale", [("a.png", "task-1")]).images[0]
    assert image.verdict == "go" and image.attempts.deaths == 0
    assert tracker.holds("r1")["a.png"][1].holder == this_process()


def test_a_release_lost_in_an_outage_is_tried_again_until_it_is_taken(world, monkeypatch):
    storage, tracker, settings = world
    mine = Claims(storage, tracker, this_process(), settings)
    mine.claim("r1", "denoise", [("a.png", "t1")], computing=True)
    real = tracker.release

    def down(*args):
        raise ConnectionError("Redis down")

    monkeypatch.setattr(tracker, "release", down)
    with pytest.raises(ConnectionError):
        mine.release("r1", ["a.png"])
    assert mine.release_pending() == 1 and "a.png" in tracker.holds("r1")
    monkeypatch.setattr(tracker, "release", real)
    assert mine.release_pending() == 0 and tracker.holds("r1") == {}


def test_work_in_progress_on_a_live_worker_is_not_taken_twice(world):
    storage, tracker, settings = world
    other = Holder("feedfeedfeedfeed", "gpu@host-2", "another-machine", 1, "1")
    tracker.client.set(heartbeat_key(other.token), "{}", ex=60)
    holding(tracker, other, "a.png", 4)
    claim = Claims(storage, tracker, this_process(), settings).claim("r1", "upscale", [("a.png", "t2")])
    assert claim.images[0].verdict == "elsewhere"
    assert tracker.holds("r1")["a.png"][1].holder == other


def test_a_death_is_counted_once_and_the_third_fails_the_image_with_where_it_happened(world):
    storage, tracker, settings = world
    mine = Claims(storage, tracker, this_process(), settings)
    for death in range(1, 4):
        holding(tracker, exited_process(), "a.png", 1)
        (image,) = mine.claim("r1", "upscale", [("a.png", f"t{death}")]).images
        assert image.attempts.deaths == death
        assert image.verdict == ("fail" if death == 3 else "go")
        mine.release("r1", ["a.png"])  # the next delivery goes to another worker, which dies too
    assert image.attempts.death_reason() == "worker died 3 times while processing it; last cpu@here, upscale"
    assert read_attempts(storage, "r1", "a.png", "upscale").deaths == 3  # storage is the source of truth


def test_a_holder_gone_before_it_started_costs_no_death_and_batch_mates_run_alone(world):
    storage, tracker, settings = world
    mine = Claims(storage, tracker, this_process(), settings)
    holding(tracker, exited_process(), "waiting.png", 0)
    holding(tracker, exited_process(), "mate.png", 4)
    images = {c.name: c for c in mine.claim("r1", "upscale", [("waiting.png", "t1"), ("mate.png", "t2")]).images}
    assert images["waiting.png"].attempts.deaths == 0 and not images["waiting.png"].attempts.suspect
    assert images["mate.png"].attempts.deaths == 1 and images["mate.png"].attempts.alone


def test_two_who_find_the_same_dead_holder_count_one_death(world):
    storage, tracker, settings = world
    holding(tracker, exited_process(), "a.png", 1)
    raw, hold = tracker.holds("r1")["a.png"]
    burials = [Claims(storage, tracker, this_process(), settings) for _ in range(8)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda c: c.bury("r1", raw, hold), burials))
    assert sum(r is not None for r in results) == 1
    assert read_attempts(storage, "r1", "a.png", "upscale").deaths == 1


def test_a_cancelled_run_claims_nothing(world):
    storage, tracker, settings = world
    tracker.cancel("r1")
    assert Claims(storage, tracker, this_process(), settings).claim("r1", "denoise", [("a.png", "t")]).cancelled
    assert tracker.holds("r1") == {}


def test_errors_are_counted_in_storage_and_a_configuration_error_is_flagged_once(world):
    storage, tracker, settings = world
    mine = Claims(storage, tracker, this_process(), settings)
    first = mine.record_error("r1", "a.png", "denoise", ValueError("bad  value\n"), batch=1)
    assert (first.errors, first.last_error, first.alone) == (1, "ValueError: bad value", False)
    mine.record_error("r1", "b.png", "denoise", ConfigError("S3 refused"), batch=3)
    assert tracker.config_error("r1").startswith("ConfigError: S3 refused")
    assert not tracker.flag_config_error("r1", "again")
    assert read_attempts(storage, "r1", "b.png", "denoise").alone


def test_the_cache_is_rebuilt_from_storage_when_redis_forgot_the_run(world):
    storage, tracker, settings = world
    mine = Claims(storage, tracker, this_process(), settings)
    holding(tracker, exited_process(), "a.png", 1)
    mine.claim("r1", "upscale", [("a.png", "t1")])
    mine.release("r1", ["a.png"])
    tracker.client.flushdb()
    tracker.start("r1", 3)
    assert reload_attempts(storage, tracker, "r1") == 1
    assert mine.claim("r1", "upscale", [("a.png", "t2")]).images[0].attempts.deaths == 1


def test_liveness_by_pid_sees_a_reused_pid_and_this_process():
    me = this_process()
    assert me.pid == os.getpid() and me.started == process_start(os.getpid())
    from workers.runtime.liveness import alive_here

    assert alive_here(me) is True
    assert alive_here(Holder("x", "n", me.machine, me.pid, str(int(me.started) + 1))) is False  # same pid, other process
    assert alive_here(Holder("x", "n", "elsewhere", me.pid, me.started)) is None  # another machine: ask Redis


def test_a_hold_left_at_another_stage_does_not_make_the_next_stage_a_duplicate(world):
    """A CPU process that handed an image on but could not release it (Redis hiccup) still runs: the
    GPU stage's delivery takes the image over instead of dropping it as work in progress."""
    storage, tracker, settings = world
    cpu = Claims(storage, tracker, this_process(), settings)
    cpu.claim("r1", "denoise", [("a.png", "t1")], computing=True)
    gpu_process = Holder("0f0f0f0f0f0f0f0f", "gpu@host-2", "another-machine", 9, "1")
    claim = Claims(storage, tracker, gpu_process, settings).claim("r1", "upscale", [("a.png", "t2")])
    assert claim.images[0].verdict == "go" and claim.images[0].attempts.deaths == 0
    assert tracker.holds("r1")["a.png"][1].holder == gpu_process
