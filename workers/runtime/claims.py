"""Every delivery of an image claims it first: who held it before, and what that says.

* Nobody holds it: claimed, go on.
* A live process holds it at the same stage, for another message: this delivery is a duplicate of
  work in progress (a message sent twice); it is dropped, and the holder finishes the image.
* A live process holds it for this very message (same task id): the holder let go of it (its retry
  or hand-back was published but the release was lost in an outage) and nobody else works on it:
  taken over, no death counted.
* A process that is gone holds it: it died with the image. If it was computing the image, that is
  a death, counted in the image's attempts record in storage; at MAX_WORKER_DEATHS this delivery
  records the image as failed instead of handing it to the next victim.

The recovery sweep buries the holds of dead processes the same way (:meth:`Claims.bury`), so a
death is counted exactly once whoever sees it first: every step is a compare-and-set on the hold.
Unexpected errors are counted here too (:meth:`Claims.record_error`).

Plain functions of a storage, a tracker and this process's identity: no Celery.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from workers.errors import ConfigError
from workers.io.storage import Storage
from workers.run.attempts import Attempts, count_error, describe_error, read_attempts, stored_attempts, write_attempts
from workers.runtime.holds import Hold, new_hold
from workers.runtime.liveness import Holder, alive
from workers.runtime.tracking import RunTracker
from workers.settings import Settings

logger = logging.getLogger(__name__)

Verdict = Literal["go", "elsewhere", "fail"]


@dataclass(frozen=True)
class Claimed:
    """One image of a delivery, after the claim."""

    name: str
    verdict: Verdict  # go: work on it; elsewhere: a live process has it, drop; fail: deaths reached the limit
    attempts: Attempts
    hold: Hold  # this process's hold (not stored when the verdict is elsewhere)


@dataclass(frozen=True)
class Claim:
    cancelled: bool
    images: list[Claimed] = field(default_factory=list)


def attempts_field(attempts: Attempts) -> str:
    return f"{attempts.stage}:{attempts.name}"


class Claims:
    """Claims, deaths and errors for the images this process works on."""

    def __init__(self, storage: Storage, tracker: RunTracker, me: Holder, settings: Settings) -> None:
        self.storage, self.tracker, self.me, self.settings = storage, tracker, me, settings
        self._pending: dict[str, set[str]] = {}  # run -> names whose release an outage stopped
        self._pending_lock = threading.Lock()

    def claim(self, run_id: str, stage: str, tasks: Sequence[tuple[str, str]], computing: bool = False) -> Claim:
        """Claim (name, task id) pairs for ``stage``: one Redis round trip in the usual case (nobody
        held them), one more to ask whether other holders are alive, storage only to count a death.

        ``computing``: the heavy part follows at once, one image at a time (the CPU stage); a GPU
        batch marks its forward passes as they start (:meth:`computing`).
        """
        mine = {name: new_hold(name, stage, task_id, self.me).computing(int(computing))
                for name, task_id in dict(tasks).items()}
        state = self.tracker.claim(run_id, stage, self.me.token, mine)
        if state.cancelled:
            return Claim(cancelled=True)
        living = alive([hold.holder for hold in state.others.values()], self.tracker.client)
        images = []
        for name in mine:
            cached = state.attempts.get(name)
            attempts = Attempts.from_json(cached) if cached else Attempts(name, stage)
            other = state.others.get(name)
            if other is not None:
                # Work in progress is duplicated only by another message for the same stage: a hold at
                # another stage was left by a process that has moved on (a hand-over it could not
                # release), and a hold for this very message by one that sent it on (a retry whose
                # release was lost); both are taken over.
                busy = other.stage == stage and other.task_id != mine[name].task_id and not self._abandoned(other)
                if living[other.holder.token] and busy:
                    images.append(Claimed(name, "elsewhere", attempts, mine[name]))
                    continue
                if not self.tracker.swap_hold(run_id, name, state.raw_others[name], mine[name]):
                    images.append(Claimed(name, "elsewhere", attempts, mine[name]))  # taken over by another just now
                    continue
                if not living[other.holder.token]:
                    counted = self._count_death(run_id, other)
                    if counted is not None and counted.stage == stage:
                        attempts = counted
            verdict: Verdict = "fail" if attempts.deaths >= self.settings.max_worker_deaths else "go"
            images.append(Claimed(name, verdict, attempts, mine[name]))
        return Claim(cancelled=False, images=images)

    def _abandoned(self, hold: Hold) -> bool:
        """A live holder that has kept an image longer than the slowest task may take (the visibility
        timeout): hung, not working. Its image is taken over; no death is counted."""
        return time.time() - hold.since > self.settings.visibility_timeout_s

    def computing(self, run_id: str, holds: Sequence[Hold], idle: Sequence[Hold] = ()) -> None:
        """Work on these claimed images starts now (their loading, or a forward pass over them): if this
        process dies in it, each of them died, with ``len(holds) - 1`` others. The ``idle`` ones are
        not being worked on (done with, or not started): a death from now on is not theirs."""
        updated = [hold.computing(0) for hold in idle] + [hold.computing(len(holds)) for hold in holds]
        self.tracker.update_holds(run_id, self.me.token, updated)

    def release(self, run_id: str, names: Sequence[str]) -> None:
        """Drop this process's holds on ``names``. A release Redis does not take (an outage longer
        than the tracker's retries) is kept and tried again by :meth:`release_pending` (the heartbeat
        calls it), so a hold never outlives its message for longer than the outage.

        Raises:
            the outage error: the release is pending.
        """
        try:
            self.tracker.release(run_id, names, self.me.token)
        except Exception:
            self.release_later(run_id, names)
            raise

    def release_later(self, run_id: str, names: Sequence[str]) -> None:
        """Leave these holds to :meth:`release_pending` (a call that would have released them failed)."""
        with self._pending_lock:
            self._pending.setdefault(run_id, set()).update(names)

    def release_pending(self, tracker: RunTracker | None = None) -> int:
        """Try again the releases an outage stopped (on ``tracker``: the heartbeat's, quick to give
        up); returns how many holds are still pending."""
        with self._pending_lock:
            pending, self._pending = self._pending, {}
        for run_id, names in pending.items():
            try:
                (tracker or self.tracker).release(run_id, sorted(names), self.me.token)
            except Exception:  # still down: the next beat tries again
                with self._pending_lock:
                    self._pending.setdefault(run_id, set()).update(names)
        with self._pending_lock:
            return sum(len(names) for names in self._pending.values())

    def bury(self, run_id: str, raw: str, hold: Hold) -> Attempts | None:
        """Drop the hold of a process that is gone (if nobody did meanwhile) and count the death if it
        was computing the image. Returns the image's record, or None when someone else buried it."""
        if not self.tracker.swap_hold(run_id, hold.name, raw, None):
            return None
        return self._count_death(run_id, hold) or Attempts(hold.name, hold.stage)

    def bury_pool_child(self, run_id: str, name: str, pid: int) -> Attempts | None:
        """A prefork pool child of this worker died (the parent saw it): bury its hold on ``name`` now,
        before Celery requeues the message, so that a worker on another machine that takes the
        requeued message does not find the image held by a process whose heartbeat still runs."""
        entry = self.tracker.holds(run_id).get(name)
        if entry is None:
            return None
        raw, hold = entry
        if hold.holder.pid != pid or hold.holder.machine != self.me.machine:
            return None  # not that child's (it died before claiming, or the image moved on)
        return self.bury(run_id, raw, hold)

    def _count_death(self, run_id: str, hold: Hold) -> Attempts | None:
        """One more death for the image, if its dead holder was computing it (storage, then the cache)."""
        if hold.batch == 0:
            logger.warning("run %s: %s was held by %s, gone before it started on it; sent on, no death counted",
                           run_id, hold.name, hold.holder.node)
            return None
        attempts = read_attempts(self.storage, run_id, hold.name, hold.stage).with_death(hold.holder.node, hold.batch)
        write_attempts(self.storage, run_id, attempts)
        self.tracker.cache_attempts(run_id, {attempts_field(attempts): attempts.to_json()})
        logger.warning("run %s: %s: worker %s died while processing it at %s (in a pass of %d); %d of %d deaths",
                       run_id, hold.name, hold.holder.node, hold.stage, hold.batch, attempts.deaths,
                       self.settings.max_worker_deaths)
        return attempts

    def record_error(self, run_id: str, name: str, stage: str, error: BaseException, batch: int = 1) -> Attempts:
        """Count an unexpected error of the image (storage, then the cache); the caller asks the
        failure policy (:mod:`workers.run.policy`) whether it is retried or recorded as failed.

        A configuration error is the deployment's, not the image's: it is flagged on the run once (the
        waiting producer and ``producer status`` show it) and logged loudly once per process.
        """
        if isinstance(error, ConfigError):
            report_config_error(self.tracker, run_id, error, self.me.node)
        attempts = count_error(self.storage, run_id, name, stage, error, self.me.node, batch)
        self.tracker.cache_attempts(run_id, {attempts_field(attempts): attempts.to_json()})
        return attempts


_REPORTED: set[tuple[str, str]] = set()


def report_config_error(tracker: RunTracker, run_id: str, error: BaseException, node: str) -> None:
    """Loudly, once: a configuration error stops every image alike, and a traceback per image would
    bury it. The first report of a run (a flag set once, cluster-wide) is logged critical and shown
    by ``producer status`` and the waiting producer; the rest are one warning line each."""
    message = f"{describe_error(error)} (seen by {node})"
    try:
        loud = tracker.flag_config_error(run_id, message)
    except Exception:  # flagging is a courtesy; then each process says it once
        loud = (run_id, type(error).__name__) not in _REPORTED
    _REPORTED.add((run_id, type(error).__name__))
    if loud:
        logger.critical("run %s: CONFIGURATION ERROR, every image of this kind will fail until it is fixed: %s",
                        run_id, message)
    else:
        logger.warning("run %s: the configuration error again: %s", run_id, describe_error(error))


def reload_attempts(storage: Storage, tracker: RunTracker, run_id: str) -> int:
    """Fill the tracker's attempts cache from storage (a run started again, or rebuilt after Redis
    forgot it); returns how many records there were."""
    records = {attempts_field(a): a.to_json() for a in stored_attempts(storage, run_id)}
    tracker.cache_attempts(run_id, records)
    return len(records)
