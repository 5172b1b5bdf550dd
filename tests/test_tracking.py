"""Completion tracking in a real Redis: exactly one caller sees a run complete."""

from concurrent.futures import ThreadPoolExecutor

import pytest

from workers.tracking import RunTracker

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
    tracker.forget("run")
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
