"""Which images of a run have finished, and exactly-once detection of the last one, in Redis.

A chord over ten thousand tasks would keep ten thousand results and a counter that a redelivered
task decrements twice. Instead each finished image is added to a per-run Redis set: adding is
idempotent, and one Lua script adds the name and compares the set's size with the run's total
atomically, so exactly one caller -- the one whose image completed the set -- sees ``True`` and
enqueues the aggregation.

Storage stays the source of truth: if Redis loses these keys (restart without persistence),
``producer enqueue`` on the same run rebuilds them from the objects already stored.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis
from kombu.exceptions import OperationalError
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

KEY_PREFIX = "lowlight:run"
TTL_S = 14 * 24 * 3600
# Ride out a Redis restart (an append-only file to reload, a pod rescheduled): a refused or dropped
# connection is retried with backoff 0.2, 0.4, ... capped at 2 s, about 20 s in all, before the
# error surfaces. redis-py's own default gives up within milliseconds.
OUTAGE_RETRY = Retry(ExponentialBackoff(cap=2.0, base=0.1), retries=14)
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
local total = tonumber(redis.call('GET', KEYS[2]) or '-1')
if added == 1 and redis.call('SCARD', KEYS[1]) == total then
    return 1
end
return 0
"""


class RunTracker:
    """Finished-image bookkeeping for runs, on one Redis connection pool."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._finish = client.register_script(_FINISH)

    @classmethod
    def from_url(cls, url: str) -> RunTracker:
        return cls(redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=5, retry=OUTAGE_RETRY))

    @staticmethod
    def _keys(run_id: str) -> tuple[str, str, str]:
        base = f"{KEY_PREFIX}:{run_id}"
        return f"{base}:finished", f"{base}:total", f"{base}:cancelled"

    def start(self, run_id: str, total: int) -> None:
        """Set how many images the run has and forget which had finished (call before enqueueing its
        tasks, then :meth:`finish_many` what storage says is finished).

        The set is rebuilt rather than kept: names that storage no longer counts as finished (a
        failure retried with ``--retry-failed``, an input removed from the source) must not count.
        """
        finished_key, total_key, cancelled_key = self._keys(run_id)
        with self.client.pipeline() as pipe:
            pipe.delete(finished_key, cancelled_key)
            pipe.set(total_key, total, ex=TTL_S)
            pipe.execute()

    def finish(self, run_id: str, name: str) -> bool:
        """Mark ``name`` finished (done or failed). True for exactly one call: the one completing the run."""
        finished_key, total_key, _ = self._keys(run_id)
        return bool(self._finish(keys=[finished_key, total_key], args=[name, TTL_S]))

    def finish_many(self, run_id: str, names: Iterable[str]) -> bool:
        """Mark several names in one round trip (a resumed run re-marks thousands); True if one of them
        completed the run. Each mark is the same atomic script as :meth:`finish`."""
        finished_key, total_key, _ = self._keys(run_id)
        with self.client.pipeline(transaction=False) as pipe:
            for name in names:
                self._finish(keys=[finished_key, total_key], args=[name, TTL_S], client=pipe)
            return any(pipe.execute())

    def counts(self, run_id: str) -> tuple[int, int | None]:
        """(finished, total); total is None when Redis does not know the run (e.g. lost on restart)."""
        finished_key, total_key, _ = self._keys(run_id)
        with self.client.pipeline() as pipe:
            pipe.scard(finished_key)
            pipe.get(total_key)
            finished, total = pipe.execute()
        return int(finished), (int(total) if total is not None else None)

    def forget(self, run_id: str) -> None:
        """Drop a finished run's keys (``producer enqueue`` rebuilds them if the run is resumed)."""
        self.client.delete(*self._keys(run_id)[:2])

    def cancel(self, run_id: str) -> None:
        self.client.set(self._keys(run_id)[2], 1, ex=TTL_S)

    def is_cancelled(self, run_id: str) -> bool:
        return bool(self.client.exists(self._keys(run_id)[2]))
