"""Object storage behind one small interface, chosen by URL scheme.

Keys are ``/``-separated and relative (``runs/<run>/sr/x.png``). Every key is validated before
use, so no key can climb out of its root (``..``, absolute paths, backslashes, control characters).
Writes are atomic: a reader sees the old object or the new one, never a torn one.

Backends live one per module in this package and are listed in :data:`BACKENDS`, one table from URL
scheme to ``"module:Class"``, imported only when chosen (kombu's ``TRANSPORT_ALIASES`` does the same),
so a process that never touches S3 never imports the S3 client. :func:`open_storage` (or a shared
:class:`StorageFactory`) opens a URL: ``s3://bucket/prefix``, ``file:///abs/dir`` or a plain path.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from workers.errors import ConfigError
from workers.io.inflight import ordered_map
from workers.io.storage.base import Storage, check_key, join_key
from workers.io.storage.local import LocalStorage, local_path, storage_url_for
from workers.registry import lookup
from workers.settings import Settings

__all__ = [
    "BACKENDS", "LocalStorage", "Storage", "StorageFactory", "backend_class", "check_key", "fetch_in_order",
    "is_local", "join_key", "local_path", "open_storage", "scheme_of", "split_location", "storage_url_for",
]

# URL scheme -> "module:Class". A class implements Storage and ``from_url(url, factory)``.
BACKENDS: dict[str, str] = {
    "file": "workers.io.storage.local:LocalStorage",
    "s3": "workers.io.storage.s3:S3Storage",
}


def scheme_of(url: str) -> str:
    """The backend a URL names: its scheme (``s3``, ``file``), or ``file`` for a plain path."""
    return url.split("://", 1)[0].lower() if "://" in url else "file"


def is_local(url: str) -> bool:
    """True for a local directory (a path or ``file://`` URL)."""
    return scheme_of(url) == "file"


def backend_class(scheme: str) -> Any:
    """The storage class registered for ``scheme`` (a :class:`Storage` with ``from_url(url, factory)``),
    imported on first use.

    Raises:
        ConfigError: no backend has that scheme (with the closest one as a suggestion).
    """
    module, _, name = lookup("storage backend", scheme, BACKENDS).partition(":")
    return getattr(importlib.import_module(module), name)


T = TypeVar("T")
R = TypeVar("R")


def fetch_in_order(fetch: Callable[[T], R], items: Iterable[T], threads: int) -> Iterator[R]:
    """``fetch(item)`` for each item, yielded in order, with up to ``2 * threads`` fetches in flight.

    Reading a run's thousands of small objects one at a time is bound by round trips to S3; this
    overlaps them while memory stays bounded (a fixed window, not the whole run). The first error
    is raised in order, and unstarted fetches are cancelled when the caller stops early.
    """
    if threads <= 1:
        yield from map(fetch, items)
        return
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fetch")
    try:
        yield from ordered_map(fetch, items, pool, 2 * threads - 1)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class StorageFactory:
    """Opens storages by URL, sharing one client per backend and process (clients pool connections)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._clients: dict[str, Any] = {}

    def shared_client(self, scheme: str, make: Callable[[Settings], Any]) -> Any:
        """The process's one client for ``scheme``, made by ``make(settings)`` on first use."""
        if scheme not in self._clients:
            self._clients[scheme] = make(self.settings)
        return self._clients[scheme]

    def open(self, url: str) -> Storage:
        """``s3://bucket/prefix``, ``file:///abs/dir`` or a plain directory path.

        Raises:
            ConfigError: an unknown scheme, or a malformed URL for its backend.
        """
        return backend_class(scheme_of(url)).from_url(url, self)

    def open_source(self, url: str) -> Storage:
        """:meth:`open` for a folder of inputs: a local one follows its symlinks wherever they point
        (they are the user's own files); run stores never do.

        Raises:
            ConfigError: as :meth:`open`.
        """
        storage = self.open(url)
        return storage.following_links() if isinstance(storage, LocalStorage) else storage


def split_location(location: str) -> tuple[str, str]:
    """``dir/calibration.json`` or ``s3://bucket/prefix/calibration.json`` -> (folder URL, file name).

    Raises:
        ConfigError: ``location`` has no file name.
    """
    folder, _, name = location.rstrip("/").rpartition("/")
    if not name:
        raise ConfigError(f"not a file location: {location!r}")
    return folder or ".", name


def open_storage(url: str, settings: Settings | None = None) -> Storage:
    """One storage at ``url`` (a fresh client; processes that open many share a :class:`StorageFactory`)."""
    return StorageFactory(settings or Settings.from_env()).open(url)
