"""The run's clock: wall time, images per second and images finished per interval, counted from the
latest enqueue (:class:`~workers.run.started.RunStart`) for every pipeline, whatever its stages."""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence

from workers.report.data import RunClock
from workers.run.started import RunStart

THROUGHPUT_BINS = 30  # about this many intervals on the throughput chart
_NICE_BIN_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400)


def run_clock(start: RunStart | None, finishes: Sequence[float], first_start: float | None = None) -> RunClock:
    """The clock of a run whose images finished (were upscaled, or failed) at ``finishes`` (epoch s).

    From ``start`` when the run recorded one: images that finished before it belong to an earlier
    enqueue and are only counted. Without one (a run made before runs recorded it), from
    ``first_start``, the earliest start the images' own records give.
    """
    if start is None:
        origin = first_start if first_start is not None else min(finishes, default=None)
        since, before = array("d", finishes), 0
    else:
        origin = start.timestamp
        since = array("d", (t for t in finishes if t >= origin))
        before = len(finishes) - len(since)
    wall = max(since) - origin if since and origin is not None else None
    first = min(since) - origin if since and origin is not None else None
    bin_s, throughput = _throughput(origin or 0.0, since)
    return RunClock(
        started_at=start.at if start else "",
        remaining=start.remaining if start else None,
        finished=len(since),
        finished_before=before,
        wall_seconds=wall,
        first_seconds=first,
        bin_s=bin_s,
        throughput=throughput,
    )


def _throughput(origin: float, finishes: Sequence[float]) -> tuple[int, tuple[tuple[float, int], ...]]:
    """Images finished per interval, from ``origin``; the interval is a round number of seconds."""
    if not finishes:
        return 1, ()
    span = max(max(finishes) - origin, 0.0)
    bin_s = next((b for b in _NICE_BIN_S if span / b <= THROUGHPUT_BINS), _NICE_BIN_S[-1])
    counts = [0] * max(math.ceil(span / bin_s), 1)  # the last image closes the last interval
    for t in finishes:
        counts[min(max(int((t - origin) // bin_s), 0), len(counts) - 1)] += 1
    return bin_s, tuple((i * float(bin_s), n) for i, n in enumerate(counts))
