"""A directory on a local (or shared) filesystem as a :class:`~workers.io.storage.base.Storage`."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlparse

from workers.errors import InvalidKeyError, ObjectNotFoundError, StorageFullError
from workers.io.storage.base import check_key

_FILE_MODE = 0o644
_FULL = {errno.ENOSPC: "no space left", errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only filesystem"}


def local_path(url: str) -> Path:
    """The path a ``file://`` URL (percent-encoded) or a plain path (``~`` expanded) names."""
    return Path(unquote(urlparse(url).path)) if url.startswith("file://") else Path(url).expanduser()


def storage_url_for(path: str | os.PathLike[str]) -> str:
    """The ``file://`` URL recorded in manifests for a local directory."""
    return Path(path).resolve().as_uri()


class LocalStorage:
    """A directory on a local (or shared) filesystem.

    Writes never leave the directory, symlinks included. Reads do not leave it either, unless it was
    opened as a source (:meth:`following_links`): a user's input folder may link to files elsewhere
    (a dataset assembled from a read-only mount), and those are the user's own inputs to read.
    """

    def __init__(self, root: str | os.PathLike[str], follow_links: bool = False) -> None:
        self.root = Path(root).resolve()
        self.follow_links = follow_links

    @classmethod
    def from_url(cls, url: str, factory: Any = None) -> LocalStorage:
        """``file:///abs/dir`` (as :func:`storage_url_for` writes it, percent-encoded) or a plain path (``~`` expanded)."""
        return cls(local_path(url))

    def following_links(self) -> LocalStorage:
        """The same directory as a source: reads follow symlinks wherever they point."""
        return LocalStorage(self.root, follow_links=True)

    @property
    def root_url(self) -> str:
        return self.root.as_uri()

    def _path(self, key: str, writing: bool = False) -> Path:
        path = self.root / check_key(key)
        if self.follow_links and not writing:
            return path
        # check_key already forbids '..'; this also catches symlinked escapes.
        try:
            inside = path.resolve().is_relative_to(self.root)
        except RuntimeError:  # a symlink loop (Python 3.11 raises this, not OSError)
            inside = False
        if not inside:
            raise InvalidKeyError(f"object key {key!r} resolves outside {self.root}")
        return path

    def unreadable_reason(self, key: str) -> str | None:
        """Why the entry ``key`` lists but holds no readable file (a symlink that dangles, loops or
        names no regular file), or None."""
        path = self.root / check_key(key)
        if not path.is_symlink():
            return None
        target = os.readlink(path)
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            return f"symbolic link to {target!r}, which does not exist"
        except OSError as exc:
            return f"symbolic link to {target!r} that cannot be followed ({exc.strerror or exc})"
        return None if stat.S_ISREG(mode) else f"symbolic link to {target!r}, which is not a regular file"

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

    def version(self, key: str) -> str:
        """Inode, modification time and size: every write replaces the file by a rename (a new inode)."""
        try:
            info = self._path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFoundError(key) from None
        return f"{info.st_ino}:{info.st_mtime_ns}:{info.st_size}"

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
        """Keys of the regular files and of the symlinks that are not folders under ``base`` (a
        dangling or looping one is listed, so that a source reports it rather than lose it:
        :meth:`unreadable_reason`), symlinked folders not entered (as ``rglob`` does), as plain
        strings: ``rglob`` keeps a Path of every file it yields, 0.8 KiB each, and a run's ``meta/``
        holds two files per image."""
        for folder, _, files in os.walk(base):
            relative = os.path.relpath(folder, self.root).replace(os.sep, "/")
            for name in files:
                path = os.path.join(folder, name)
                if not name.startswith(".tmp-") and (os.path.isfile(path) or os.path.islink(path)):
                    yield name if relative == "." else f"{relative}/{name}"

    def delete(self, key: str) -> None:
        path = self._path(key, writing=True)
        if path.is_file():
            path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def writer(self, key: str) -> Iterator[IO[bytes]]:
        """Raises StorageFullError: the filesystem is full, over quota or read-only."""
        path = self._path(key, writing=True)
        with self._full_is_reported():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        try:
            with self._full_is_reported(), os.fdopen(fd, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, _FILE_MODE)  # mkstemp creates 0600; outputs are meant to be shared
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @contextlib.contextmanager
    def _full_is_reported(self) -> Iterator[None]:
        """A full disk is the deployment's to fix, not an image's (a retry cannot help): one clear error."""
        try:
            yield
        except OSError as exc:
            if exc.errno not in _FULL:
                raise
            raise StorageFullError(f"cannot write to {self.root}: {_FULL[exc.errno]} ({exc.strerror}); free space "
                                   "(or make it writable), then enqueue the run again") from None

    def copy_to(self, key: str, out: IO[bytes]) -> None:
        try:
            with self._path(key).open("rb") as f:
                shutil.copyfileobj(f, out)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFoundError(key) from None

    def url(self, key: str) -> str:
        return str(self._path(key))
