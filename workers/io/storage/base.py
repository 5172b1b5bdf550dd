"""Object keys and the storage interface every backend implements."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import IO, Protocol

from workers.errors import InvalidKeyError


def check_key(key: str) -> str:
    """Return ``key`` if it is a safe relative object key, else raise :class:`InvalidKeyError`."""
    if not key or key.startswith("/") or "\\" in key:
        raise InvalidKeyError(f"unsafe object key {key!r}")
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise InvalidKeyError(f"object key {key!r} contains control characters")
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise InvalidKeyError(f"object key {key!r} has an empty, '.' or '..' segment")
    return key


def join_key(*parts: str) -> str:
    """Join key segments (each may itself contain ``/``) and validate the result."""
    return check_key("/".join(p.strip("/") for p in parts if p.strip("/")))


class Storage(Protocol):
    """What the pipeline needs from a store. Every backend implements exactly this."""

    @property
    def root_url(self) -> str:
        """The URL this storage was opened at, normalised (``file:///abs/dir``, ``s3://bucket/prefix``)."""

    @property
    def key_prefix(self) -> str:
        """What the backend puts before every key in its own namespace, which counts towards its key
        length limit: an S3 URL's prefix; empty for a local directory (limits there are per segment)."""

    def get(self, key: str) -> bytes:
        """Return the object's bytes. Raises ObjectNotFoundError, StorageUnavailableError."""

    def fingerprint(self, key: str) -> str:
        """A short text that changes whenever the object's content does (local: size and SHA-256; S3:
        size and ETag), read without transferring the object where the backend allows.
        Raises ObjectNotFoundError, StorageUnavailableError."""

    def version(self, key: str) -> str:
        """A short text that changes whenever the object is replaced, read as cheaply as the backend
        allows (local: one ``stat``; S3: one HEAD), for caches to revalidate.
        Raises ObjectNotFoundError, StorageUnavailableError."""

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` atomically under ``key``, replacing any previous object."""

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str) -> Iterator[str]:
        """Yield the keys under ``prefix`` (recursively), sorted."""

    def folders(self, prefix: str) -> Iterator[str]:
        """Yield the names of the "folders" directly under ``prefix`` (the next key segment of keys below
        it), sorted, without listing what is inside them."""

    def delete(self, key: str) -> None:
        """Remove the object; a missing object is not an error."""

    def writer(self, key: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        """A binary file whose content is stored under ``key`` when the block exits cleanly."""

    def copy_to(self, key: str, out: IO[bytes]) -> None:
        """Stream the object into ``out`` without holding it in memory."""

    def url(self, key: str) -> str:
        """A human-readable location for messages (file path or s3:// URL)."""
