"""The run's clock: wall time and throughput from the latest enqueue, for every pipeline."""

from __future__ import annotations

import pytest

from workers.report.clock import run_clock
from workers.run.started import RunStart

START = RunStart("2026-12-07T10:00:00.000+00:00", remaining=4, finished=0)
T0 = START.timestamp


def test_a_run_is_timed_from_its_enqueue_to_its_last_image():
    clock = run_clock(START, [T0 + 6.0, T0 + 6.5, T0 + 7.0, T0 + 8.0])
    assert (clock.wall_seconds, clock.first_seconds, clock.finished, clock.finished_before) == (8.0, 6.0, 4, 0)
    assert clock.images_per_s == pytest.approx(0.5)
    assert clock.bin_s == 1 and sum(n for _, n in clock.throughput) == 4
    assert clock.throughput[0] == (0.0, 0) and clock.throughput[6] == (6.0, 2)  # from the enqueue, not the first image


def test_a_resumed_run_counts_only_what_it_did_since_and_nothing_new_is_no_time():
    resumed = RunStart("2026-12-07T11:00:00.000+00:00", remaining=2, finished=2)
    earlier = [T0 + 5.0, T0 + 6.0]  # the first enqueue's images, an hour before
    clock = run_clock(resumed, [*earlier, resumed.timestamp + 3.0, resumed.timestamp + 4.0])
    assert (clock.wall_seconds, clock.finished, clock.finished_before) == (4.0, 2, 2)
    assert sum(n for _, n in clock.throughput) == 2 and clock.throughput[-1][0] < 10  # not an hour of bins
    idle = run_clock(RunStart("2026-12-07T12:00:00.000+00:00", remaining=0, finished=4), [*earlier, T0 + 7, T0 + 8])
    assert (idle.wall_seconds, idle.images_per_s, idle.finished, idle.finished_before) == (None, None, 0, 4)
    assert idle.throughput == () and idle.remaining == 0


def test_without_a_recorded_start_the_first_image_start_is_the_origin_and_without_images_there_is_no_time():
    old = run_clock(None, [T0 + 2.0, T0 + 3.0], first_start=T0 + 1.0)
    assert (old.started_at, old.wall_seconds, old.finished, old.remaining) == ("", 2.0, 2, None)
    assert run_clock(None, [T0 + 2.0, T0 + 3.0]).wall_seconds == 1.0
    nothing = run_clock(START, [])
    assert (nothing.wall_seconds, nothing.first_seconds, nothing.throughput, nothing.images_per_s) == (
        None,
        None,
        (),
        None,
    )


def test_a_long_run_gets_round_intervals():
    clock = run_clock(START, [T0 + t for t in range(0, 3600, 7)])
    assert clock.bin_s == 120 and len(clock.throughput) <= 31
    assert sum(n for _, n in clock.throughput) == len(range(0, 3600, 7))
