"""An S3, MinIO or other S3-compatible bucket as a :class:`~workers.io.storage.base.Storage`.

Imported only when a ``s3://`` URL is opened, so processes without S3 never load the client.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Iterator
from typing import IO, Any
from urllib.parse import urlparse

from workers.errors import ConfigError, ObjectNotFoundError, StorageUnavailableError
from workers.io.storage.base import check_key, join_key
from workers.settings import Settings

# Spool to disk past this size while streaming a write to S3 (submission.csv can be large).
_SPOOL_BYTES = 16 * 1024 * 1024


class S3Storage:
    """A bucket (and optional key prefix) on S3, MinIO or any S3-compatible server.

    Holds one ``minio.Minio`` client, shared by every S3Storage a :class:`StorageFactory` opens.
    """

    def __init__(self, client: Any, bucket: str, prefix: str = "") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    @classmethod
    def from_url(cls, url: str, factory: Any) -> S3Storage:
        """``s3://bucket[/prefix]``, on the factory's one S3 client."""
        bucket, prefix = parse_s3_url(url)
        return cls(factory.shared_client("s3", make_s3_client), bucket, prefix)

    @property
    def root_url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    @property
    def key_prefix(self) -> str:
        return self.prefix

    def _key(self, key: str) -> str:
        return join_key(self.prefix, check_key(key)) if self.prefix else check_key(key)

    def _call(self, key: str, fn, *args, **kwargs):  # thin error mapper
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

    def fingerprint(self, key: str) -> str:
        """``<size>:etag:<ETag>`` from one HEAD request."""
        stat = self._call(key, self.client.stat_object, self.bucket, self._key(key))
        return f"{stat.size}:etag:{stat.etag}"

    def version(self, key: str) -> str:
        return self.fingerprint(key)

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

    def folders(self, prefix: str) -> Iterator[str]:
        full = self._key(prefix) if prefix.strip("/") else self.prefix
        full = full + "/" if full else ""

        def names() -> list[str]:
            # Not recursive: S3 answers with the common prefixes, one entry per folder.
            objects = self.client.list_objects(self.bucket, prefix=full, recursive=False)
            return sorted(o.object_name[len(full) :].rstrip("/") for o in objects if o.is_dir)

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
