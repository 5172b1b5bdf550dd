"""Retries that end: how long to wait before each, and the in-process runner's queue of images to
try again. An image whose transient errors outlast TASK_MAX_RETRIES is recorded as failed (and
``--retry-failed`` tries it again): a run goes on past it, in process as with workers."""

from __future__ import annotations

import heapq
import time
from collections import Counter

from workers.run.context import StageContext
from workers.run.stages import Outcome, give_up

BACKOFF_MAX_S = 60  # keep well under the visibility timeout: a waiting retry is unacknowledged


def backoff_s(retries: int) -> int:
    """Seconds before retry number ``retries + 1``: 2, 4, 8, ... capped at BACKOFF_MAX_S."""
    return min(2 ** (retries + 1), BACKOFF_MAX_S)


class RetryLater:
    """Images of one run to try again at one stage or another, each when its backoff is over."""

    def __init__(self, ctx: StageContext, run_id: str) -> None:
        self.ctx, self.run_id = ctx, run_id
        self._tries: Counter[str] = Counter()
        self._due: list[tuple[float, str, str]] = []  # (when, name, stage)

    def __bool__(self) -> bool:
        return bool(self._due)

    def add(self, outcome: Outcome, stage: str) -> Outcome | None:
        """Schedule the retry of a ``retry`` outcome; once TASK_MAX_RETRIES are used up, record the
        image as failed instead and return that outcome."""
        retries = self._tries[outcome.name]
        if retries >= self.ctx.settings.task_max_retries:
            return give_up(self.ctx, self.run_id, outcome.name, stage, retries + 1, outcome.error or outcome.reason)
        self._tries[outcome.name] += 1
        heapq.heappush(self._due, (time.monotonic() + backoff_s(retries), outcome.name, stage))
        return None

    def due(self) -> list[tuple[str, str]]:
        """(name, stage) of every retry whose time has come."""
        now, ready = time.monotonic(), []
        while self._due and self._due[0][0] <= now:
            _, name, stage = heapq.heappop(self._due)
            ready.append((name, stage))
        return ready

    def wait(self) -> None:
        """Sleep until the next retry is due (nothing else to do meanwhile)."""
        if self._due:
            time.sleep(max(0.0, self._due[0][0] - time.monotonic()))
