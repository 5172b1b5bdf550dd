"""A directory on a local (or shared) filesystem as a :class:`~workers.io.storage.base.Storage`."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlparse

from workers.errors import InvalidKeyError, ObjectNotFoundError
from workers.io.storage.base import check_key

_FILE_MODE = 0o644


def local_path(url: str) -> Path:
    """The path a ``file://`` URL (percent-encoded) or a plain path (``~`` expanded) names."""
    return Path(unquote(urlparse(url).path)) if url.startswith("file://") else Path(url).expanduser()


def storage_url_for(path: str | os.PathLike[str]) -> str:
    """The ``file://`` URL recorded in manifests for a local directory."""
    return Path(path).resolve().as_uri()


class LocalStorage:
    """A directory on a local (or shared) filesystem."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()

    @classmethod
    def from_url(cls, url: str, factory: Any = None) -> LocalStorage:
        """``file:///abs/dir`` (as :func:`storage_url_for` writes it, percent-encoded) or a plain path (``~`` expanded)."""
        return cls(local_path(url))

    @property
    def root_url(self) -> str:
        return self.root.as_uri()

    def _path(self, key: str) -> Path:
        path = self.root / check_key(key)
        # check_key already forbids '..'; this also catches symlinked escapes.
        if not path.resolve().is_relative_to(self.root):
            raise InvalidKeyError(f"object key {key!r} resolves outside {self.root}")
        return path

    @property
    def key_prefix(self) -> str:
        return ""

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFoundError(key) from None

    def fingerprint(self, key: str) -> str:
        """``<size>:sha256:<hex>`` of the content, read once: not the modification time, which ``cp -p``
        and tar carry over to other bytes."""
        try:
            with self._path(key).open("rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
                return f"{f.tell()}:sha256:{digest}"
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
        return iter(sorted(self._walk(base)))

    def folders(self, prefix: str) -> Iterator[str]:
        base = self._path(prefix) if prefix.strip("/") else self.root
        if not base.is_dir():
            return iter(())
        return iter(sorted(entry.name for entry in os.scandir(base) if entry.is_dir(follow_symlinks=False)))

    def _walk(self, base: Path) -> Iterator[str]:
        """Keys of the regular files under ``base``, symlinked folders not entered (as ``rglob`` does),
        as plain strings: ``rglob`` keeps a Path of every file it yields, 0.8 KiB each, and a run's
        ``meta/`` holds two files per image."""
        for folder, _, files in os.walk(base):
            relative = os.path.relpath(folder, self.root).replace(os.sep, "/")
            for name in files:
                if not name.startswith(".tmp-") and os.path.isfile(os.path.join(folder, name)):
                    yield name if relative == "." else f"{relative}/{name}"

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
