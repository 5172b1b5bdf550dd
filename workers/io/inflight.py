"""Work in flight on threads, consumed in order, with a bounded window.

:func:`ordered_map` is the pattern behind reading a run's objects for the aggregate (round trips
overlap) and behind the GPU stage's loading (the next images are fetched and decoded while the
device computes): submit ahead, take results in submission order, never hold more than the window.
:class:`Prefetcher` keeps the next item of an indexed sequence ready (the next training batch).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], pool: Executor, ahead: int) -> Iterator[R]:
    """``fn(item)`` for each item, run on ``pool``, yielded in order, with at most ``ahead`` calls
    submitted beyond the one being waited for (``ahead`` 0: one at a time, still on the pool).

    The first error is raised in order; when the caller stops early (an error, ``close()``), calls
    not yet started are cancelled and the ones running are left to finish on the pool.
    """
    window: deque[Future[R]] = deque()
    try:
        for item in items:
            window.append(pool.submit(fn, item))
            if len(window) > ahead:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()
    finally:
        for future in window:
            future.cancel()


class Prefetcher(Generic[R]):
    """``make(i)`` for a sequence of indices, each next one computed on a background thread while the
    caller uses the current one: for work that is a pure function of its index (a training batch of
    ``(seed, step)``), so where it runs changes nothing. Asking for another index than the one
    prefetched (a retried step) computes it in the caller's thread."""

    def __init__(self, make: Callable[[int], R]) -> None:
        self._make = make
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
        self._next: tuple[int, Future[R]] | None = None

    def get(self, index: int) -> R:
        """``make(index)``; starts ``make(index + 1)`` in the background."""
        ahead, self._next = self._next, None
        if ahead is not None and ahead[0] == index:
            item = ahead[1].result()
        else:
            if ahead is not None:
                ahead[1].cancel()
            item = self._make(index)
        self._next = (index + 1, self._pool.submit(self._make, index + 1))
        return item

    def close(self) -> None:
        """Stop: a prefetch not yet started is cancelled, one running is waited for."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Prefetcher[R]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
