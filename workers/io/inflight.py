"""Work in flight on a thread pool, consumed in order, with a bounded window.

The pattern behind reading a run's objects for the aggregate (round trips overlap) and behind the
GPU stage's loading (the next images are fetched and decoded while the device computes): submit
ahead, take results in submission order, never hold more than the window.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from typing import TypeVar

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
