"""Completion tracking in a real Redis: exactly one caller sees a run complete."""

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from redis.backoff import ConstantBackoff

from workers.runtime.tracking import OutageRetry, RunTracker

pytestmark = pytest.mark.integration


@pytest.fixture
def tracker(redis_server):
    client = redis_server.client(db=15)
    client.flushdb()
    return RunTracker(client)


def test_exactly_one_finish_completes_the_run_even_with_duplicates_and_races(tracker):
    names = [f"img{i}.png" for i in range(200)]
    tracker.start("run", len(names))
    with ThreadPoolExecutor(8) as pool:
        completions = list(pool.map(lambda n: tracker.finish("run", n), names + names))  # every image twice
    assert sum(completions) == 1
    assert tracker.counts("run") == (200, 200)


def test_forgotten_or_unknown_runs_are_not_recreated_by_late_duplicates(tracker):
    tracker.start("run", 1)
    assert tracker.finish("run", "a.png")
    assert tracker.forget("run", tracker.epoch("run"))
    assert not tracker.finish("run", "a.png")
    assert tracker.counts("run") == (0, None)
    assert not tracker.finish("never-started", "x.png")
    assert tracker.client.keys("*") == []


def test_finish_many_reports_completion_and_cancel_flag(tracker):
    tracker.start("run", 2)
    tracker.client.script_flush()  # the pipelined marks must load the script themselves
    assert not tracker.finish_many("run", [])
    assert not tracker.finish_many("run", ["a"])
    assert tracker.finish_many("run", ["a", "b"])
    tracker.cancel("run")
    assert tracker.is_cancelled("run")
    tracker.start("run", 2)  # enqueueing again resumes a cancelled run
    assert not tracker.is_cancelled("run")


def test_start_rebuilds_the_finished_set(tracker):
    """Enqueueing again forgets which images had finished: a failure retried with --retry-failed (or
    an input gone from the source) must not keep counting, or the run would complete too early."""
    tracker.start("run", 2)
    tracker.finish_many("run", ["a", "retried"])
    tracker.start("run", 2)
    assert not tracker.finish_many("run", ["a"])  # what storage still counts as finished
    assert tracker.counts("run") == (1, 2)
    assert tracker.finish("run", "retried")  # the retried image, once it finishes again, completes the run


def test_a_name_that_is_not_an_input_of_the_current_start_never_counts(tracker):
    """A late message for an input removed before the run was enqueued again: finishing it must not
    complete the count while a real input is still running, nor stop the last real one from
    completing it."""
    tracker.start("run", 3, ["a.png", "b.png", "c.png"])
    tracker.start("run", 2, ["a.png", "b.png"])  # c.png removed, enqueued again
    assert not tracker.finish("run", "a.png")
    assert not tracker.finish("run", "c.png")  # c's old message, processed late
    assert tracker.counts("run") == (1, 2)
    assert tracker.finish("run", "b.png")  # the real last image completes the run
    assert tracker.counts("run") == (2, 2)


def test_forgetting_with_an_empty_epoch_leaves_a_start_that_came_meanwhile(tracker):
    """An aggregation that read no epoch (Redis did not know the run) must not drop the keys of a
    start of the same run that happened while it aggregated; nor may an older epoch."""
    looked = tracker.epoch("run")
    assert looked == ""
    tracker.start("run", 2, ["a.png", "b.png"])
    assert not tracker.forget("run", looked)
    assert not tracker.forget("run", "an-older-epoch")
    assert tracker.counts("run") == (0, 2)
    assert tracker.forget("run", tracker.epoch("run"))
    assert tracker.counts("run") == (0, None)


def test_a_tracker_from_a_url_rides_out_a_redis_restart(tmp_path):
    """Workers and producers build their tracker from the broker URL: its calls wait out a Redis that
    is down for a few seconds (here 3 s) instead of failing at once."""
    from testbed.servers import RedisServer

    server = RedisServer(tmp_path / "redis", appendonly=True)
    try:
        tracker = RunTracker.from_url(server.url)
        tracker.start("run", 1)
        server.stop()
        with ThreadPoolExecutor(1) as pool:
            finished = pool.submit(tracker.finish, "run", "a.png")
            time.sleep(3)
            assert not finished.done(), finished.exception()
            server.start()  # from this thread: test servers die with the thread that started them
            assert finished.result(timeout=60)  # waited for Redis, then completed the run
    finally:
        server.stop()


def test_a_late_forget_never_drops_the_keys_of_the_run_started_again(tracker):
    """The aggregation of a finished run reads the epoch, a new `producer enqueue` of the same run
    starts it again, then the aggregation's forget arrives: the new run keeps its tracking."""
    first = tracker.start("run", 2)
    assert tracker.epoch("run") == first
    second = tracker.start("run", 3)  # re-enqueued meanwhile
    assert second != first
    assert not tracker.forget("run", first)
    assert tracker.counts("run") == (0, 3) and tracker.epoch("run") == second
    assert tracker.forget("run", second) and tracker.counts("run") == (0, None)


def test_progress_is_stamped_by_start_finish_and_touch(tracker):
    before = time.time()
    tracker.start("run", 2)
    assert before <= tracker.last_progress("run") <= time.time()
    time.sleep(0.01)
    started = tracker.last_progress("run")
    tracker.finish("run", "a.png")
    assert tracker.last_progress("run") > started
    tracker.note_recovery("run", reenqueued=3)
    tracker.note_recovery("run", reenqueued=2, stalls=1)
    recovery = tracker.recovery("run")
    assert recovery["reenqueued"] == 5 and recovery["stalls"] == 1 and recovery["last_sweep"] >= before
    assert tracker.lease("sweep", "a", 5) and not tracker.lease("sweep", "b", 5)


def test_refused_credentials_are_not_retried_like_an_outage(redis_server):
    """A wrong REDIS_PASSWORD took the producer's connection check 23 s of outage retries to report:
    redis-py counts AuthenticationError as a ConnectionError."""

    class CountingBackoff(ConstantBackoff):
        waits = 0

        def compute(self, failures: int) -> float:
            CountingBackoff.waits += 1
            return super().compute(failures)

    client = redis.Redis(host=redis_server.host, port=redis_server.port, password="wrong",
                         retry=OutageRetry(CountingBackoff(0.01), retries=5))
    with pytest.raises(redis.AuthenticationError):
        client.ping()
    assert CountingBackoff.waits == 0
    client.close()
