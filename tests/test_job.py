"""A distributed training job's chain, driven by its stored state: what each message does."""

from __future__ import annotations

import json

import pytest

from workers.errors import ConfigError
from workers.training.chunks import JobMarker, next_step
from workers.training.job import TrainJob

JOB = TrainJob("s3://b/dataset", started_at=100.0)


def marker(**fields) -> JobMarker:
    return JobMarker(**{"job": 100.0, "chunk": 1, "task": "t1", "holder": {"token": "w"}, **fields})


@pytest.mark.parametrize(("state", "task", "alive", "redelivered", "step"), [
    (None, "t0", None, False, "run"),  # a new job's first message
    (JobMarker(50.0, 4, done=True), "t0", None, False, "run"),  # a newer job on the same output
    (JobMarker(200.0, 0), "t0", None, False, "duplicate"),  # a message of an older job
    (marker(done=True, complete=True), "t1", None, True, "duplicate"),  # the job is over
    (marker(failed=True), "t1", False, True, "duplicate"),
    (marker(complete=True, next="t2"), "t2", None, False, "run"),  # the next chunk's message
    (marker(complete=True, next="t2"), "t1", None, True, "resend"),  # the finished chunk retried: next may be lost
    (marker(complete=True, next="t2"), "t1", None, False, "duplicate"),  # a copy of it must not fork the chain
    (marker(), "t1", True, True, "held"),  # its chunk runs on a live worker
    (marker(), "t1", False, True, "died"),  # its worker died: resume it, one more death
    (marker(holder=None), "t1", None, True, "resume"),  # retried after an error
    (marker(), "t9", True, False, "duplicate"),  # any other message
])
def test_each_message_does_what_the_stored_state_says(state, task, alive, redelivered, step):
    assert next_step(state, JOB, task, alive, redelivered) == step


def test_only_a_first_chunk_starts_a_job():
    assert next_step(None, TrainJob("s3://b/dataset", started_at=100.0, chunk=3), "t3", None) == "duplicate"


def test_a_marker_written_by_this_version_reads_back_and_an_older_one_still_reads():
    written = marker(complete=True, next="t2", steps=300, best_psnr=33.5, deaths=1, error="")
    assert JobMarker.from_dict(json.loads(json.dumps(written.to_dict()))) == written
    older = {"job": 100.0, "chunk": 2, "task": "t2", "complete": False, "done": False, "failed": False,
             "holder": None, "heartbeat": 1.0, "deaths": 0, "errors": 1, "error": "ValueError: x"}
    assert JobMarker.from_dict(older) == JobMarker(100.0, 2, "t2", heartbeat=1.0, errors=1, error="ValueError: x")


def test_a_marker_of_a_newer_version_or_no_marker_at_all_is_refused():
    with pytest.raises(ConfigError, match="newer"):
        JobMarker.from_dict({"job": 1.0, "version": 99})
    with pytest.raises(ConfigError, match="not a training job marker"):
        JobMarker.from_dict({"the": "manifest"})
