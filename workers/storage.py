"""Object storage behind one small interface: a local directory or an S3-compatible bucket.

Keys are ``/``-separated and relative (``runs/<run>/sr/x.png``). Every key is validated before
use, so no key can climb out of its root (``..``, absolute paths, backslashes, control characters).
Writes are atomic: a reader sees the old object or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Protocol, TypeVar
from urllib.parse import urlparse

from workers.errors import (
    ConfigError,
    InvalidKeyError,
    ObjectNotFoundError,
    StorageUnavailableError,
)
from workers.settings import Settings

logger = logging.getLogger(__name__)

_FILE_MODE = 0o644
# Spool to disk past this size while streaming a write to S3 (submission.csv can be large).
_SPOOL_BYTES = 16 * 1024 * 1024


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
    """What the pipeline needs from a store. Both backends implement exactly this."""

    def get(self, key: str) -> bytes:
        """Return the object's bytes. Raises ObjectNotFoundError, StorageUnavailableError."""

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` atomically under ``key``, replacing any previous object."""

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str) -> Iterator[str]:
        """Yield the keys under ``prefix`` (recursively), sorted."""

    def delete(self, key: str) -> None:
        """Remove the object; a missing object is not an error."""

    def writer(self, key: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        """A binary file whose content is stored under ``key`` when the block exits cleanly."""

    def copy_to(self, key: str, out: IO[bytes]) -> None:
        """Stream the object into ``out`` without holding it in memory."""

    def url(self, key: str) -> str:
        """A human-readable location for messages (file path or s3:// URL)."""


class LocalStorage:
    """A directory on a local (or shared) filesystem."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()

    def _path(self, key: str) -> Path:
        path = self.root / check_key(key)
        # check_key already forbids '..'; this also catches symlinked escapes.
        if not path.resolve().is_relative_to(self.root):
            raise InvalidKeyError(f"object key {key!r} resolves outside {self.root}")
        return path

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFoundError(key) from None

    def put(self, key: str, data: bytes) -> None:
        with self.writer(key) as f:
            f.write(data)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> Iterator[str]:
        base = self._path(prefix) if prefix.strip("/") else self.root
        if not base.is_dir():
            return iter(())
        keys = (
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".tmp-")
        )
        return iter(sorted(keys))

    def delete(self, key: str) -> None:
        path = self._path(key)
        if path.is_file():
            path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def writer(self, key: str) -> Iterator[IO[bytes]]:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, _FILE_MODE)  # mkstemp creates 0600; outputs are meant to be shared
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def copy_to(self, key: str, out: IO[bytes]) -> None:
        try:
            with self._path(key).open("rb") as f:
                shutil.copyfileobj(f, out)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFoundError(key) from None

    def url(self, key: str) -> str:
        return str(self._path(key))


class S3Storage:
    """A bucket (and optional key prefix) on S3, MinIO or any S3-compatible server.

    Holds one ``minio.Minio`` client; reuse the instance (one per process, see :func:`open_storage`).
    """

    def __init__(self, client: object, bucket: str, prefix: str = "") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    def _key(self, key: str) -> str:
        return join_key(self.prefix, check_key(key)) if self.prefix else check_key(key)

    def _call(self, key: str, fn, *args, **kwargs):  # noqa: ANN001, ANN202 - thin error mapper
        from minio.error import MinioException, S3Error

        where = self._where(key)
        try:
            return fn(*args, **kwargs)
        except S3Error as exc:
            if exc.code in {"NoSuchKey", "NoSuchObject"}:
                raise ObjectNotFoundError(key) from None
            if exc.code in {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket"}:
                raise ConfigError(
                    f"S3 refused {where}: {exc.code} ({exc.message}); "
                    "check S3_ENDPOINT, STORAGE_URL, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                ) from None
            raise StorageUnavailableError(f"S3 error on {where}: {exc.code} {exc.message}") from exc
        except MinioException as exc:  # a non-S3 answer: proxy error page, 429, ...
            raise StorageUnavailableError(f"S3 error on {where}: {exc}") from exc
        except (OSError, _urllib3_errors()) as exc:
            raise StorageUnavailableError(f"S3 unreachable at {where}: {exc}") from exc

    def _where(self, key: str) -> str:
        """url(key), also for the empty list prefix (which url() rightly refuses as a key)."""
        return self.url(key) if key.strip("/") else f"s3://{self.bucket}/{self.prefix}"

    def get(self, key: str) -> bytes:
        def read() -> bytes:
            response = self.client.get_object(self.bucket, self._key(key))
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        return self._call(key, read)

    def put(self, key: str, data: bytes) -> None:
        self._call(key, self.client.put_object, self.bucket, self._key(key), io.BytesIO(data), len(data))

    def exists(self, key: str) -> bool:
        try:
            self._call(key, self.client.stat_object, self.bucket, self._key(key))
        except ObjectNotFoundError:
            return False
        return True

    def list(self, prefix: str) -> Iterator[str]:
        full = self._key(prefix) if prefix.strip("/") else self.prefix
        full = full + "/" if full else ""
        strip = len(self.prefix) + 1 if self.prefix else 0

        def names() -> list[str]:
            objects = self.client.list_objects(self.bucket, prefix=full, recursive=True)
            return sorted(o.object_name[strip:] for o in objects if not o.is_dir)

        return iter(self._call(prefix, names))

    def delete(self, key: str) -> None:
        self._call(key, self.client.remove_object, self.bucket, self._key(key))

    @contextlib.contextmanager
    def writer(self, key: str) -> Iterator[IO[bytes]]:
        name = self._key(key)  # refuse a bad key before the caller writes anything
        with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as buffer:
            yield buffer
            size = buffer.seek(0, io.SEEK_END)  # everything written, even after a seek back
            buffer.seek(0)
            self._call(key, self.client.put_object, self.bucket, name, buffer, size)

    def copy_to(self, key: str, out: IO[bytes]) -> None:
        def stream() -> None:
            response = self.client.get_object(self.bucket, self._key(key))
            try:
                for chunk in response.stream(1024 * 1024):
                    out.write(chunk)
            finally:
                response.close()
                response.release_conn()

        self._call(key, stream)

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"


def _urllib3_errors() -> type[Exception]:
    import urllib3.exceptions

    return urllib3.exceptions.HTTPError


def make_s3_client(settings: Settings) -> object:
    """A ``minio.Minio`` client from settings, with short timeouts so outages surface as retries."""
    import urllib3
    from minio import Minio

    if not settings.aws_access_key_id or not settings.aws_secret_access_key:
        raise ConfigError("S3 storage needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment")
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=5, read=60),
        maxsize=16,
        # Few, quick retries here: long outages are retried by Celery with backoff instead.
        retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
    )
    return Minio(
        settings.s3_endpoint,
        access_key=settings.aws_access_key_id,
        secret_key=settings.aws_secret_access_key,
        secure=settings.s3_secure,
        region=settings.s3_region or None,
        http_client=http,
    )


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> (``bucket``, ``some/prefix``)."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ConfigError(f"not an s3://bucket[/prefix] URL: {url!r}")
    prefix = parsed.path.strip("/")
    if prefix:
        check_key(prefix)
    return parsed.netloc, prefix


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
    window: deque[Future[R]] = deque()
    try:
        for item in items:
            window.append(pool.submit(fetch, item))
            if len(window) >= 2 * threads:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class StorageFactory:
    """Opens storages by URL, sharing one S3 client per process (the client pools connections)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._s3_client: object | None = None

    def s3_client(self) -> object:
        if self._s3_client is None:
            self._s3_client = make_s3_client(self.settings)
        return self._s3_client

    def open(self, url: str) -> Storage:
        """``s3://bucket/prefix``, ``file:///abs/dir`` or a plain directory path."""
        if url.startswith("s3://"):
            bucket, prefix = parse_s3_url(url)
            return S3Storage(self.s3_client(), bucket, prefix)
        if url.startswith("file://"):
            url = urlparse(url).path
        return LocalStorage(url)


def storage_url_for(path: str | os.PathLike[str]) -> str:
    """The ``file://`` URL recorded in manifests for a local directory."""
    return Path(path).resolve().as_uri()
