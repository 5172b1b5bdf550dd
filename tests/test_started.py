"""The run's start record: what an enqueue writes for the report's clock, read back exactly."""

from __future__ import annotations

import pytest

from workers.errors import ConfigError
from workers.io.storage import LocalStorage
from workers.run.keys import RunKeys
from workers.run.started import RunStart, read_start, record_start


def test_a_start_round_trips_and_the_latest_replaces_the_one_before(tmp_path):
    store = LocalStorage(tmp_path)
    assert read_start(store, "r1") is None  # a run made before runs recorded it
    record_start(store, "r1", RunStart("2026-12-07T10:00:00.000+00:00", remaining=5, finished=0))
    latest = RunStart("2026-12-07T11:00:00.250+00:00", remaining=0, finished=5)
    record_start(store, "r1", latest)
    assert read_start(store, "r1") == latest
    assert store.exists(RunKeys("r1").started) and RunKeys("r1").started == "runs/r1/started.json"
    assert latest.timestamp - RunStart("2026-12-07T10:00:00.000+00:00", 0, 0).timestamp == pytest.approx(3600.25)


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b'{"at": "yesterday", "remaining": 1, "finished": 0, "version": 1}',
        b'{"at": "2026-12-07T10:00:00+00:00", "remaining": 1}',
        b'{"at": "2026-12-07T10:00:00+00:00", "remaining": 1, "finished": 0, "version": 9}',
    ],
)
def test_a_record_it_cannot_read_is_refused_and_the_report_does_without(tmp_path, raw):
    with pytest.raises(ConfigError):
        RunStart.from_json(raw)
    store = LocalStorage(tmp_path)
    store.put(RunKeys("r1").started, raw)
    assert read_start(store, "r1") is None
