"""The embedded runner's retries that end: the images of one run to try again, each when the failure
policy (:mod:`workers.run.policy`) says, or recorded as failed with the reason it gives, exactly as
the workers do. A run goes on past an image that fails, in process as with workers."""

from __future__ import annotations

import heapq
import time
from collections import Counter

from workers.run.attempts import count_error
from workers.run.context import StageContext
from workers.run.policy import decide, is_transient
from workers.run.stages import Outcome, record_failure


class RetryLater:
    """Images of one run to try again at one stage or another, each when its backoff is over."""

    def __init__(self, ctx: StageContext, run_id: str) -> None:
        self.ctx, self.run_id = ctx, run_id
        self._tries: Counter[str] = Counter()
        self._due: list[tuple[float, str, str]] = []  # (when, name, stage)

    def __bool__(self) -> bool:
        return bool(self._due)

    def add(self, name: str, stage: str, error: BaseException, batch: int = 1) -> Outcome | None:
        """What the policy says for ``error``: the retry scheduled (None), or the image recorded as
        failed (that outcome). An unexpected error is counted in the image's attempts record first, as
        a worker counts it.

        Raises:
            the error itself: a configuration error (the command stops with it, one line).
            TransientError, ConfigError: the attempts record could not be stored.
        """
        retries = self._tries[name]
        errors = 0
        if not is_transient(error):
            errors = count_error(self.ctx.storage, self.run_id, name, stage, error, self.ctx.hostname, batch).errors
        decision = decide(error, retries=retries, errors=errors, settings=self.ctx.settings, stage=stage, stops=True)
        if decision.action == "stop":
            raise error
        if decision.action == "fail":
            return record_failure(self.ctx, self.run_id, name, stage, decision.reason)
        self._tries[name] += 1
        heapq.heappush(self._due, (time.monotonic() + decision.countdown_s, name, stage))
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
