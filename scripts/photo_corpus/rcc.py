"""Qt's binary resource files (.rcc, versions 1 to 3): GCompris ships its images inside them."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .errors import RccError

RCC_MAGIC = b"qres"
RCC_FLAG_ZLIB = 0x01
RCC_FLAG_DIRECTORY = 0x02
RCC_FLAG_ZSTD = 0x04
_RCC_HEADER = struct.Struct(">4sIIII")  # magic, version, tree offset, data offset, names offset


@dataclass(frozen=True)
class RccEntry:
    """A file inside an .rcc: its resource path ("/dir/name.png"), flags and data offset."""

    path: str
    flags: int
    data_offset: int


class RccArchive:
    """Reads Qt's binary resource format (`rcc --binary`, versions 1 to 3), as written by Qt's rcc.cpp.

    Layout: a header (`qres`, version, tree/data/names offsets, and from version 3 a flags word); a
    tree of fixed-size nodes (14 bytes, 22 from version 2 with a last-modified stamp) where node 0 is
    the root directory and a directory's children are `count` consecutive nodes from `first child`;
    names as (UTF-16 length, hash, UTF-16BE text); data as (4-byte length, payload), the payload of
    a zlib-compressed file being qCompress output (4-byte uncompressed size, zlib stream).
    """

    def __init__(self, blob: bytes) -> None:
        if len(blob) < _RCC_HEADER.size or blob[:4] != RCC_MAGIC:
            raise RccError("not a Qt resource file (no 'qres' header)")
        _, self.version, self._tree, self._data, self._names = _RCC_HEADER.unpack_from(blob)
        if self.version not in (1, 2, 3):
            raise RccError(f"unsupported rcc format version {self.version}")
        self._node_size = 14 if self.version == 1 else 22
        self._blob = blob
        self._by_path: dict[str, RccEntry] | None = None

    def entries(self) -> Iterator[RccEntry]:
        """Every file (not directory) in the tree, depth first in stored order."""
        seen: set[int] = set()
        pending: list[tuple[int, str]] = [(0, "")]
        while pending:
            index, parent = pending.pop()
            if index in seen:
                raise RccError(f"node {index} is reached twice: the tree is corrupt")
            seen.add(index)
            name_offset, flags, count_or_zero, first_or_data = self._node(index)
            path = f"{parent}/{self._name(name_offset)}" if index else ""
            if flags & RCC_FLAG_DIRECTORY:
                pending.extend((child, path) for child in reversed(range(first_or_data, first_or_data + count_or_zero)))
            else:
                yield RccEntry(path, flags, first_or_data)

    def read(self, entry: RccEntry) -> bytes:
        """The uncompressed bytes of `entry`. Raises RccError if they cannot be extracted."""
        payload = self._slice(self._data + entry.data_offset)
        if entry.flags & RCC_FLAG_ZSTD:
            return _zstd_decompress(payload)
        if entry.flags & RCC_FLAG_ZLIB:
            return _qt_uncompress(payload)
        return payload

    def read_path(self, path: str) -> bytes:
        """The uncompressed bytes of the file at `path`. Raises RccError if there is none or it is unreadable."""
        if self._by_path is None:
            self._by_path = {entry.path: entry for entry in self.entries()}
        entry = self._by_path.get(path)
        if entry is None:
            raise RccError(f"no {path} in the resource file")
        return self.read(entry)

    def files(self, wanted: Callable[[str], bool] = lambda path: True) -> dict[str, bytes]:
        """{path: bytes} of the files whose path `wanted` accepts."""
        return {entry.path: self.read(entry) for entry in self.entries() if wanted(entry.path)}

    def _node(self, index: int) -> tuple[int, int, int, int]:
        offset = self._tree + index * self._node_size
        try:
            name_offset, flags = struct.unpack_from(">IH", self._blob, offset)
            if flags & RCC_FLAG_DIRECTORY:
                count, first_child = struct.unpack_from(">II", self._blob, offset + 6)
                return name_offset, flags, count, first_child
            # A file node has territory and language (2 bytes each) before its data offset.
            (data_offset,) = struct.unpack_from(">I", self._blob, offset + 10)
        except struct.error as error:
            raise RccError(f"tree node {index} lies outside the file") from error
        return name_offset, flags, 0, data_offset

    def _name(self, name_offset: int) -> str:
        offset = self._names + name_offset
        try:
            (length,) = struct.unpack_from(">H", self._blob, offset)
        except struct.error as error:
            raise RccError(f"name at {offset} lies outside the file") from error
        start = offset + 6  # after the length and the 4-byte name hash
        raw = self._blob[start : start + 2 * length]
        if len(raw) != 2 * length:
            raise RccError(f"name at {offset} is truncated")
        return raw.decode("utf-16-be", errors="replace")

    def _slice(self, offset: int) -> bytes:
        try:
            (length,) = struct.unpack_from(">I", self._blob, offset)
        except struct.error as error:
            raise RccError(f"data at {offset} lies outside the file") from error
        payload = self._blob[offset + 4 : offset + 4 + length]
        if len(payload) != length:
            raise RccError(f"data at {offset} is truncated")
        return payload


def _qt_uncompress(payload: bytes) -> bytes:
    if len(payload) < 4:
        raise RccError("compressed entry shorter than its size prefix")
    (expected,) = struct.unpack_from(">I", payload)
    try:
        data = zlib.decompress(payload[4:])
    except zlib.error as error:
        raise RccError(f"corrupt zlib data: {error}") from error
    if len(data) != expected:
        raise RccError(f"zlib data gave {len(data)} bytes, the header says {expected}")
    return data


def _zstd_decompress(payload: bytes) -> bytes:
    # The standard library has zstd only from Python 3.14; use what is there, install nothing.
    try:
        from compression import zstd  # type: ignore[import-not-found]
    except ImportError:
        try:
            import zstandard as zstd  # type: ignore[import-not-found,no-redef]
        except ImportError as error:
            raise RccError("zstd-compressed entry: needs Python 3.14 or the 'zstandard' module") from error
    try:
        return zstd.decompress(payload)
    except zstd.ZstdError as error:
        raise RccError(f"corrupt zstd data: {error}") from error
