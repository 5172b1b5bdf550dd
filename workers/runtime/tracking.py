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

Storage stays the source of truth: if Redis loses these keys (restart without persistence), the
sweep (or ``producer enqueue`` on the same run) rebuilds them from the objects already stored.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable

import redis
from kombu.exceptions import OperationalError
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

KEY_PREFIX = "lowlight:run"
TTL_S = 14 * 24 * 3600


class OutageRetry(Retry):
    """redis-py's :class:`~redis.retry.Retry` that never retries refused credentials: redis-py makes
    ``AuthenticationError`` a ``ConnectionError``, so a wrong REDIS_PASSWORD was retried like an
    outage (23 s before the producer could say so)."""

    def call_with_retry(self, do, fail, *args, **kwargs):  # noqa: ANN001, ANN201, ANN002, ANN003 - redis-py's signature
        def fail_unless_refused(error: Exception, *rest: object) -> None:
            fail(error, *rest)
            if isinstance(error, redis.AuthenticationError):
                raise error

        return super().call_with_retry(do, fail_unless_refused, *args, **kwargs)


# Ride out a Redis restart (an append-only file to reload, a pod rescheduled): a refused or dropped
# connection is retried with backoff 0.1, 0.2, ... capped at 2 s before the error surfaces; redis-py's
# own default gives up within milliseconds. Workers wait about two minutes (their work must not be
# lost to an outage); a producer checking its configuration about 20 s (a wrong BROKER_URL should
# not take minutes to say so).
OUTAGE_RETRY = OutageRetry(ExponentialBackoff(cap=2.0, base=0.1), retries=60)
QUICK_RETRY = OutageRetry(ExponentialBackoff(cap=2.0, base=0.1), retries=14)
# What a Redis outage that outlasted those retries raises, from redis-py and from kombu (sending tasks).
OUTAGE_ERRORS: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError, OperationalError)

# A run Redis does not know (never started here, lost in a restart, or forgotten after aggregation)
# is left alone: a late duplicate must not recreate its keys. `producer enqueue` starts it again.
_FINISH = """
if redis.call('EXISTS', KEYS[2]) == 0 then
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


# Drop a run's keys only if they still belong to the epoch the caller aggregated.
_FORGET = """
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return 0
end
redis.call('DEL', unpack(KEYS))
return 1
"""


class RunTracker:
    """Finished-image bookkeeping for runs, on one Redis connection pool."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._finish = client.register_script(_FINISH)
        self._forget = client.register_script(_FORGET)

    @classmethod
    def from_url(cls, url: str, retry: Retry = OUTAGE_RETRY) -> RunTracker:
        return cls(redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=5, retry=retry))

    @staticmethod
    def _key(run_id: str, part: str) -> str:
        return f"{KEY_PREFIX}:{run_id}:{part}"

    def start(self, run_id: str, total: int) -> str:
        """Set how many images the run has, forget which had finished, draw a new epoch and stamp the
        progress (call before enqueueing its tasks, then :meth:`finish_many` what storage says is
        finished). Returns the epoch.

        The set is rebuilt rather than kept: names that storage no longer counts as finished (a
        failure retried with ``--retry-failed``, an input removed from the source) must not count.
        """
        epoch = secrets.token_hex(8)
        with self.client.pipeline() as pipe:
            pipe.delete(self._key(run_id, "finished"), self._key(run_id, "cancelled"), self._key(run_id, "recovery"))
            pipe.set(self._key(run_id, "total"), total, ex=TTL_S)
            pipe.set(self._key(run_id, "epoch"), epoch, ex=TTL_S)
            pipe.set(self._key(run_id, "progress"), time.time(), ex=TTL_S)
            pipe.execute()
        return epoch

    def _finish_keys(self, run_id: str) -> list[str]:
        return [self._key(run_id, "finished"), self._key(run_id, "total"), self._key(run_id, "progress")]

    def finish(self, run_id: str, name: str) -> bool:
        """Mark ``name`` finished (done or failed) and stamp the run's progress. True for exactly one
        call: the one completing the run."""
        return bool(self._finish(keys=self._finish_keys(run_id), args=[name, TTL_S, time.time()]))

    def finish_many(self, run_id: str, names: Iterable[str]) -> bool:
        """Mark several names in one round trip (a resumed run re-marks thousands); True if one of them
        completed the run. Each mark is the same atomic script as :meth:`finish`."""
        keys, now = self._finish_keys(run_id), time.time()
        with self.client.pipeline(transaction=False) as pipe:
            for name in names:
                self._finish(keys=keys, args=[name, TTL_S, now], client=pipe)
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
        return value.decode() if value else ""

    def forget(self, run_id: str, epoch: str = "") -> bool:
        """Drop a finished run's keys, if they still belong to ``epoch`` (any epoch when empty): a run
        started again since keeps its own. True when the keys were dropped."""
        parts = ("epoch", "finished", "total", "progress", "recovery")
        return bool(self._forget(keys=[self._key(run_id, part) for part in parts], args=[epoch]))

    def touch(self, run_id: str, at: float | None = None) -> None:
        """Stamp the run's progress (default: now): an image moved on, or the sweep just re-enqueued its rest."""
        self.client.set(self._key(run_id, "progress"), time.time() if at is None else at, ex=TTL_S)

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
        return {k.decode(): float(v) for k, v in self.client.hgetall(self._key(run_id, "recovery")).items()}

    def cancel(self, run_id: str) -> None:
        self.client.set(self._key(run_id, "cancelled"), 1, ex=TTL_S)

    def is_cancelled(self, run_id: str) -> bool:
        return bool(self.client.exists(self._key(run_id, "cancelled")))

    def lease(self, name: str, holder: str, seconds: float) -> bool:
        """Take the named lease for ``seconds`` if nobody holds it (one sweep per interval, cluster-wide)."""
        return bool(self.client.set(f"{KEY_PREFIX}-lease:{name}", holder, nx=True, px=max(int(seconds * 1000), 1)))
