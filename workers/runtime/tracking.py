"""Which images of a run have finished, and exactly-once detection of the last one, in Redis.

A chord over ten thousand tasks would keep ten thousand results and a counter that a redelivered
task decrements twice. Instead each finished image is added to a per-run Redis set: adding is
idempotent, and one Lua script adds the name and compares the set's size with the run's total
atomically, so exactly one caller -- the one whose image completed the set -- sees ``True`` and
enqueues the aggregation.

Each finished image also stamps the run's last progress, which the recovery sweep
(:mod:`workers.runtime.sweep`) reads to find stalled runs. Each :meth:`RunTracker.start` draws a new
epoch, so a late :meth:`RunTracker.forget` of an aggregated run cannot drop the keys of the same run
started again meanwhile.

Which process holds which image right now (:mod:`workers.runtime.holds`) and a cache of the images'
attempts records (:mod:`workers.run.attempts`) live under the same run prefix.

Storage stays the source of truth: if Redis loses these keys (restart without persistence), the
sweep (or ``producer enqueue`` on the same run) rebuilds them from the objects already stored.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from kombu.exceptions import OperationalError
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from workers.runtime import holds
from workers.runtime.holds import Hold

KEY_PREFIX = "lowlight:run"
TTL_S = 14 * 24 * 3600


def _text(value: bytes | str) -> str:
    """A reply as text (the clients here return bytes)."""
    return value.decode() if isinstance(value, bytes) else value


class OutageRetry(Retry):
    """redis-py's :class:`~redis.retry.Retry` that never retries refused credentials: redis-py makes
    ``AuthenticationError`` a ``ConnectionError``, so a wrong REDIS_PASSWORD was retried like an
    outage (23 s before the producer could say so)."""

    def call_with_retry(self, do, fail, *args, **kwargs):  # redis-py's signature
        def fail_unless_refused(error: Exception, *rest: object) -> None:
            fail(error, *rest)
            if isinstance(error, redis.AuthenticationError):
                raise error

        return super().call_with_retry(do, fail_unless_refused, *args, **kwargs)


def outage_retry(budget_s: float) -> OutageRetry:
    """Ride out a Redis restart (an append-only file to reload, a pod rescheduled): a refused or
    dropped connection is retried with backoff 0.2, 0.4, ... capped at 2 s, as many times as fit in
    ``budget_s``, before the error surfaces; redis-py's own default gives up within milliseconds."""
    retries, waited = 0, 0.0
    while waited < budget_s:
        retries += 1
        waited += min(2.0, 0.1 * 2**retries)
    return OutageRetry(ExponentialBackoff(cap=2.0, base=0.1), retries=retries)


# Workers wait REDIS_OUTAGE_S (about two minutes by default: their work must not be lost to an
# outage); a producer checking its configuration about 20 s (a wrong BROKER_URL should not take
# minutes to say so).
OUTAGE_RETRY = outage_retry(110.0)
QUICK_RETRY = outage_retry(20.0)
# What a Redis outage that outlasted those retries raises, from redis-py and from kombu (sending tasks).
OUTAGE_ERRORS: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError, OperationalError)

# A run Redis does not know (never started here, lost in a restart, or forgotten after aggregation)
# is left alone: a late duplicate must not recreate its keys. `producer enqueue` starts it again.
# The finishing process's hold on the image (KEYS[4], token ARGV[4]) is released in the same call.
# A name that is not one of the current start's inputs (KEYS[5]; a late message for an input
# removed before the run was enqueued again) is not counted: it would complete the count early.
_FINISH = """
if ARGV[4] ~= '' then
    local current = redis.call('HGET', KEYS[4], ARGV[1])
    if current and string.sub(current, 1, #ARGV[4] + 1) == ARGV[4] .. '\\t' then
        redis.call('HDEL', KEYS[4], ARGV[1])
    end
end
if redis.call('EXISTS', KEYS[2]) == 0 then
    return 0
end
if redis.call('EXISTS', KEYS[5]) == 1 and redis.call('SISMEMBER', KEYS[5], ARGV[1]) == 0 then
    return 0
end
local added = redis.call('SADD', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('SET', KEYS[3], ARGV[3], 'EX', ARGV[2])
local total = tonumber(redis.call('GET', KEYS[2]) or '-1')
if added == 1 and redis.call('SCARD', KEYS[1]) == total then
    return 1
end
return 0
"""


# Drop a run's keys only if they still belong to the epoch the caller aggregated; an empty epoch
# matches only a run Redis holds no start of (a start that came meanwhile keeps its keys).
_FORGET = """
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then
    return 0
end
redis.call('DEL', unpack(KEYS))
return 1
"""


# Every per-run key, for start() and forget().
_PARTS = ("epoch", "finished", "total", "progress", "recovery", "held", "attempts", "config-error", "names")
NAMES_CHUNK = 5000  # names per SADD when a start records its inputs


@dataclass(frozen=True)
class ClaimState:
    """What :meth:`RunTracker.claim` found: a cancelled run, or per image the other process's hold
    (None: claimed) and the cached attempts record (None: nothing went wrong before)."""

    cancelled: bool
    others: dict[str, Hold] = field(default_factory=dict)
    raw_others: dict[str, str] = field(default_factory=dict)  # exactly as stored, for a compare-and-set
    attempts: dict[str, str] = field(default_factory=dict)


class RunTracker:
    """Finished-image bookkeeping for runs, on one Redis connection pool."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._finish = client.register_script(_FINISH)
        self._forget = client.register_script(_FORGET)
        self._claim = client.register_script(holds.CLAIM)
        self._swap = client.register_script(holds.SWAP)
        self._release = client.register_script(holds.RELEASE)
        self._update = client.register_script(holds.UPDATE)

    @classmethod
    def from_url(cls, url: str, retry: Retry = OUTAGE_RETRY) -> RunTracker:
        return cls(redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=5, retry=retry))

    @staticmethod
    def _key(run_id: str, part: str) -> str:
        return f"{KEY_PREFIX}:{run_id}:{part}"

    def start(self, run_id: str, total: int, names: Sequence[str] | None = None) -> str:
        """Set how many images the run has, forget which had finished, draw a new epoch and stamp the
        progress (call before enqueueing its tasks, then :meth:`finish_many` what storage says is
        finished). Returns the epoch.

        The set is rebuilt rather than kept: names that storage no longer counts as finished (a
        failure retried with ``--retry-failed``, an input removed from the source) must not count.
        With ``names`` (the run's inputs, ``total`` of them) only those ever count as finished.
        """
        epoch = secrets.token_hex(8)
        names_key, listed = self._key(run_id, "names"), list(names or ())
        with self.client.pipeline() as pipe:
            pipe.delete(self._key(run_id, "finished"), self._key(run_id, "cancelled"), self._key(run_id, "recovery"),
                        self._key(run_id, "attempts"), self._key(run_id, "config-error"), names_key)
            for start in range(0, len(listed), NAMES_CHUNK):
                pipe.sadd(names_key, *listed[start : start + NAMES_CHUNK])
            if listed:
                pipe.expire(names_key, TTL_S)
            pipe.set(self._key(run_id, "total"), total, ex=TTL_S)
            pipe.set(self._key(run_id, "epoch"), epoch, ex=TTL_S)
            pipe.set(self._key(run_id, "progress"), time.time(), ex=TTL_S)
            pipe.execute()
        return epoch

    def _finish_keys(self, run_id: str) -> list[str]:
        return [self._key(run_id, "finished"), self._key(run_id, "total"), self._key(run_id, "progress"),
                self._key(run_id, "held"), self._key(run_id, "names")]

    def finish(self, run_id: str, name: str, token: str = "") -> bool:
        """Mark ``name`` finished (done or failed), stamp the run's progress and release the hold of
        ``token`` on it. True for exactly one call: the one completing the run."""
        return bool(self._finish(keys=self._finish_keys(run_id), args=[name, TTL_S, time.time(), token]))

    def finish_many(self, run_id: str, names: Iterable[str], token: str = "") -> bool:
        """Mark several names in one round trip (a resumed run re-marks thousands); True if one of them
        completed the run. Each mark is the same atomic script as :meth:`finish`."""
        keys, now = self._finish_keys(run_id), time.time()
        with self.client.pipeline(transaction=False) as pipe:
            for name in names:
                self._finish(keys=keys, args=[name, TTL_S, now, token], client=pipe)
            return any(pipe.execute())

    def counts(self, run_id: str) -> tuple[int, int | None]:
        """(finished, total); total is None when Redis does not know the run (e.g. lost on restart)."""
        with self.client.pipeline() as pipe:
            pipe.scard(self._key(run_id, "finished"))
            pipe.get(self._key(run_id, "total"))
            finished, total = pipe.execute()
        return int(finished), (int(total) if total is not None else None)

    def epoch(self, run_id: str) -> str:
        """The epoch of the run's current start ("" when Redis does not know the run)."""
        value = self.client.get(self._key(run_id, "epoch"))
        return _text(value) if value else ""

    def forget(self, run_id: str, epoch: str) -> bool:
        """Drop a finished run's keys, if they still belong to ``epoch`` ("": Redis held no start of
        the run when the caller looked): a run started again since keeps its own. True when the keys
        were dropped."""
        return bool(self._forget(keys=[self._key(run_id, part) for part in _PARTS], args=[epoch]))

    def touch(self, run_id: str, at: float | None = None, release: tuple[str, str] | None = None) -> None:
        """Stamp the run's progress (default: now): an image moved on, or the sweep just re-enqueued its
        rest; ``release`` = (name, token) releases that hold in the same round trip."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.set(self._key(run_id, "progress"), time.time() if at is None else at, ex=TTL_S)
            if release:
                self._release(keys=[self._key(run_id, "held")], args=[release[1], release[0]], client=pipe)
            pipe.execute()

    # -- holds: which process works on which image (workers.runtime.holds) ------------------------------

    def claim(self, run_id: str, stage: str, token: str, mine: Mapping[str, Hold]) -> ClaimState:
        """Claim the images ``mine`` (name -> the new hold) for ``token`` in one round trip, unless the
        run is cancelled; also read each image's cached attempts record at ``stage``."""
        args: list[str | int] = [token, stage, TTL_S]
        for name, hold in mine.items():
            args += [name, hold.encode()]
        reply = self._claim(keys=[self._key(run_id, "held"), self._key(run_id, "cancelled"),
                                  self._key(run_id, "attempts")], args=args)
        if int(reply[0]):
            return ClaimState(cancelled=True)
        state = ClaimState(cancelled=False)
        for name, other, cached in zip(mine, reply[1::2], reply[2::2], strict=True):
            if other:
                state.raw_others[name] = other.decode()
                state.others[name] = Hold.decode(name, other)
            if cached:
                state.attempts[name] = cached.decode()
        return state

    def swap_hold(self, run_id: str, name: str, expected: str, new: Hold | None) -> bool:
        """Replace the hold stored as exactly ``expected`` by ``new`` (None: drop it); False if it changed."""
        return bool(self._swap(keys=[self._key(run_id, "held")], args=[name, expected, new.encode() if new else ""]))

    def update_holds(self, run_id: str, token: str, updated: Sequence[Hold]) -> None:
        """Rewrite ``token``'s own holds (a forward pass is starting: they are now computing)."""
        args: list[str] = [token]
        for hold in updated:
            args += [hold.name, hold.encode()]
        self._update(keys=[self._key(run_id, "held")], args=args)

    def release(self, run_id: str, names: Iterable[str], token: str) -> None:
        """Drop ``token``'s holds on ``names`` (holds another process took over are kept)."""
        names = list(names)
        if names:
            self._release(keys=[self._key(run_id, "held")], args=[token, *names])

    def holds(self, run_id: str) -> dict[str, tuple[str, Hold]]:
        """Every hold on the run's images: name -> (the stored value, the hold)."""
        raw = self.client.hgetall(self._key(run_id, "held"))
        return {_text(k): (_text(v), Hold.decode(_text(k), v)) for k, v in raw.items()}

    # -- what went wrong, cached from storage (workers.run.attempts) -----------------------------------

    def cache_attempts(self, run_id: str, records: Mapping[str, str]) -> None:
        """Cache attempts records, by ``<stage>:<name>``, as their JSON."""
        if records:
            key = self._key(run_id, "attempts")
            with self.client.pipeline(transaction=False) as pipe:
                fields: dict[Any, Any] = dict(records)
                pipe.hset(key, mapping=fields)
                pipe.expire(key, TTL_S)
                pipe.execute()

    def flag_config_error(self, run_id: str, message: str) -> bool:
        """Record that a worker met a configuration error on this run (kept until the run is enqueued
        again). True the first time, so it is reported loudly once, not once per image."""
        return bool(self.client.set(self._key(run_id, "config-error"), message, nx=True, ex=TTL_S))

    def config_error(self, run_id: str) -> str | None:
        value = self.client.get(self._key(run_id, "config-error"))
        return _text(value) if value is not None else None

    def last_progress(self, run_id: str) -> float | None:
        """Epoch seconds of the run's last progress, or None when Redis has no stamp."""
        value = self.client.get(self._key(run_id, "progress"))
        return float(value) if value is not None else None

    def note_recovery(self, run_id: str, **counts: int) -> None:
        """Count what the sweep did for the run (``reenqueued=12``, ``aggregations=1``, ...)."""
        key = self._key(run_id, "recovery")
        with self.client.pipeline() as pipe:
            for field, n in counts.items():
                pipe.hincrby(key, field, n)
            pipe.hset(key, "last_sweep", time.time())
            pipe.expire(key, TTL_S)
            pipe.execute()

    def recovery(self, run_id: str) -> dict[str, float]:
        return {_text(k): float(v) for k, v in self.client.hgetall(self._key(run_id, "recovery")).items()}

    def cancel(self, run_id: str) -> None:
        self.client.set(self._key(run_id, "cancelled"), 1, ex=TTL_S)

    def is_cancelled(self, run_id: str) -> bool:
        return bool(self.client.exists(self._key(run_id, "cancelled")))

    def lease(self, name: str, holder: str, seconds: float) -> bool:
        """Take the named lease for ``seconds`` if nobody holds it (one sweep per interval, cluster-wide)."""
        return bool(self.client.set(f"{KEY_PREFIX}-lease:{name}", holder, nx=True, px=max(int(seconds * 1000), 1)))
