"""LocalStorage, and :class:`StorageContract`: the behaviours every storage backend must share.

The contract is written once here and run against LocalStorage (below) and against S3Storage on a
real SeaweedFS server (``test_storage_s3.py``). A backend's test class provides a ``backend``
fixture returning a :class:`Backend`: ``store`` is the storage under test (possibly with a key
prefix), ``outer`` a storage of the same kind at the root that holds ``store``'s prefix.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from workers.errors import ConfigError, InvalidKeyError, ObjectNotFoundError
from workers.io.storage import LocalStorage, Storage, StorageFactory, storage_url_for
from workers.settings import Settings

PREFIX = "some/prefix"
BIG = 17 * 1024 * 1024  # past the 16 MiB spool threshold of S3Storage.writer

BAD_KEYS = [
    "",
    "/abs",
    "/",
    "../escape",
    "a/../../escape",
    "a/..",
    "..",
    "a/./b",
    "a//b",
    "a/",
    "a\\b",
    "a\x00b",
    "a\nb",
]


def assert_every_operation_refuses(store: Storage, key: str) -> None:
    """Each key-taking operation raises InvalidKeyError for `key` (shared by every backend's tests)."""
    for op in (
        lambda: store.get(key),
        lambda: store.put(key, b"x"),
        lambda: store.exists(key),
        lambda: store.delete(key),
        lambda: store.copy_to(key, io.BytesIO()),
        lambda: store.url(key),
    ):
        with pytest.raises(InvalidKeyError):
            op()
    if key.strip("/"):  # "" (and "/") as a list prefix means "everything"
        with pytest.raises(InvalidKeyError):
            list(store.list(key))


@dataclass
class Backend:
    store: Storage
    outer: Storage
    prefix: str  # store's keys live under this prefix of outer ("" when unprefixed)
    at: Callable[[str], Storage]  # a storage of the same kind rooted at store's key prefix ``p``

    def outer_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key


def big_payload(size: int = BIG) -> bytes:
    # Incompressible and cheap: a repeated random block would do, but urandom is fast enough.
    return os.urandom(size)


class StorageContract:
    """Shared behaviours. Not collected itself (no ``Test`` prefix): subclass it per backend."""

    # ---- put / get -------------------------------------------------------------------------

    def test_put_get_round_trip(self, backend: Backend) -> None:
        store = backend.store
        data = bytes(range(256)) * 10
        store.put("runs/r1/sr/x.png", data)
        assert store.get("runs/r1/sr/x.png") == data

    def test_empty_object(self, backend: Backend) -> None:
        backend.store.put("empty.bin", b"")
        assert backend.store.get("empty.bin") == b""
        assert backend.store.exists("empty.bin")

    def test_put_replaces(self, backend: Backend) -> None:
        backend.store.put("k", b"old")
        backend.store.put("k", b"new")
        assert backend.store.get("k") == b"new"

    def test_get_missing_raises_object_not_found(self, backend: Backend) -> None:
        with pytest.raises(ObjectNotFoundError) as info:
            backend.store.get("no/such/key")
        assert info.value.key == "no/such/key"
        assert isinstance(info.value, KeyError)

    def test_get_of_a_prefix_raises_object_not_found(self, backend: Backend) -> None:
        backend.store.put("dir/child", b"x")
        with pytest.raises(ObjectNotFoundError):
            backend.store.get("dir")

    # ---- exists ----------------------------------------------------------------------------

    def test_exists(self, backend: Backend) -> None:
        store = backend.store
        assert not store.exists("a/b")
        store.put("a/b", b"1")
        assert store.exists("a/b")
        assert not store.exists("a")  # a prefix is not an object
        assert not store.exists("a/b/c")

    # ---- list ------------------------------------------------------------------------------

    def test_list_sorted_recursive_with_prefix_boundaries(self, backend: Backend) -> None:
        store = backend.store
        keys = ["c", "a/z", "ab/3", "a/b/2", "a/1", "a/b/c/d/e"]
        for key in keys:
            store.put(key, key.encode())
        assert list(store.list("")) == sorted(keys)
        # "a" is a directory-like prefix: "ab/3" does not belong to it.
        assert list(store.list("a")) == ["a/1", "a/b/2", "a/b/c/d/e", "a/z"]
        assert list(store.list("a/b")) == ["a/b/2", "a/b/c/d/e"]
        assert list(store.list("a/b/c/d")) == ["a/b/c/d/e"]
        assert list(store.list("missing")) == []
        assert list(store.list("c")) == []  # an object is not a prefix

    def test_list_empty_store(self, backend: Backend) -> None:
        assert list(backend.store.list("")) == []

    def test_folders_are_the_next_segment_only(self, backend: Backend) -> None:
        store = backend.store
        for key in ["runs/r2/manifest.json", "runs/r1/sr/a.png", "runs/r1/manifest.json", "runs/top.json", "other/x"]:
            store.put(key, b"1")
        assert list(store.folders("runs")) == ["r1", "r2"]  # not the objects, not what is inside
        assert list(store.folders("")) == ["other", "runs"]
        assert list(store.folders("runs/r1")) == ["sr"]
        assert list(store.folders("missing")) == []

    def test_list_keys_are_usable_keys(self, backend: Backend) -> None:
        store = backend.store
        store.put("x/1", b"one")
        store.put("x/2", b"two")
        assert [store.get(k) for k in store.list("x")] == [b"one", b"two"]

    def test_prefixed_store_is_confined_to_its_prefix(self, backend: Backend) -> None:
        store = backend.store
        inner = backend.at("zone/inner")  # a storage whose prefix is <store's prefix>/zone/inner
        store.put("other/x", b"outside")
        store.put("zone/innerfoo/y", b"sibling with the prefix as a string prefix")
        store.put("top", b"top")
        inner.put("k", b"inside")
        inner.put("d/e", b"inside2")
        assert list(inner.list("")) == ["d/e", "k"]
        assert list(inner.list("d")) == ["d/e"]
        assert list(store.list("zone/inner")) == ["zone/inner/d/e", "zone/inner/k"]
        assert list(store.list("zone")) == ["zone/inner/d/e", "zone/inner/k", "zone/innerfoo/y"]
        assert store.get("zone/inner/k") == b"inside"
        assert not inner.exists("other/x")
        with pytest.raises(ObjectNotFoundError):
            inner.get("top")
        inner.delete("d/e")
        assert list(store.list("")) == ["other/x", "top", "zone/inner/k", "zone/innerfoo/y"]
        assert inner.url("k").endswith("zone/inner/k")
        if backend.prefix:
            assert list(backend.outer.list(backend.prefix)) == [
                backend.outer_key(k) for k in ["other/x", "top", "zone/inner/k", "zone/innerfoo/y"]
            ]

    # ---- fingerprint ----------------------------------------------------------------------------

    def test_fingerprint_follows_the_content_not_the_key(self, backend: Backend) -> None:
        store = backend.store
        store.put("f/a", b"same bytes")
        store.put("f/b", b"same bytes")
        first = store.fingerprint("f/a")
        assert first == store.fingerprint("f/b") and first.startswith("10:")
        store.put("f/a", b"other byte")  # same size, other content
        assert store.fingerprint("f/a") != first
        with pytest.raises(ObjectNotFoundError):
            store.fingerprint("f/missing")

    def test_version_changes_when_the_object_is_replaced_and_only_then(self, backend: Backend) -> None:
        store = backend.store
        store.put("v/a", b"first")
        first = store.version("v/a")
        assert store.version("v/a") == first
        store.put("v/a", b"other")
        assert store.version("v/a") != first
        with pytest.raises(ObjectNotFoundError):
            store.version("v/missing")

    # ---- delete ----------------------------------------------------------------------------

    def test_delete(self, backend: Backend) -> None:
        store = backend.store
        store.put("d/1", b"1")
        store.put("d/2", b"2")
        store.delete("d/1")
        assert not store.exists("d/1")
        assert list(store.list("d")) == ["d/2"]
        with pytest.raises(ObjectNotFoundError):
            store.get("d/1")

    def test_delete_missing_is_not_an_error(self, backend: Backend) -> None:
        backend.store.delete("never/was")
        backend.store.put("once", b"1")
        backend.store.delete("once")
        backend.store.delete("once")

    # ---- writer ----------------------------------------------------------------------------

    def test_writer_small(self, backend: Backend) -> None:
        with backend.store.writer("w/small.csv") as f:
            f.write(b"id,value\n")
            f.write(b"1,2\n")
        assert backend.store.get("w/small.csv") == b"id,value\n1,2\n"

    def test_writer_commits_only_on_exit(self, backend: Backend) -> None:
        store = backend.store
        with store.writer("w/late") as f:
            f.write(b"partial")
            assert not store.exists("w/late")
            assert list(store.list("w")) == []
        assert store.get("w/late") == b"partial"

    def test_writer_large_streams(self, backend: Backend) -> None:
        store = backend.store
        payload = big_payload()
        chunk = 1024 * 1024
        with store.writer("big/submission.csv") as f:
            for i in range(0, len(payload), chunk):
                f.write(payload[i : i + chunk])
        out = io.BytesIO()
        store.copy_to("big/submission.csv", out)
        assert hashlib.sha256(out.getvalue()).digest() == hashlib.sha256(payload).digest()
        assert len(store.get("big/submission.csv")) == BIG

    @pytest.mark.parametrize("exc_type", [RuntimeError, KeyboardInterrupt])
    def test_writer_interrupted_leaves_no_object(self, backend: Backend, exc_type: type[BaseException]) -> None:
        store = backend.store
        with pytest.raises(exc_type), store.writer("w/aborted") as f:
            f.write(b"x" * 1000)
            raise exc_type("boom")
        assert not store.exists("w/aborted")
        assert list(store.list("")) == []

    def test_writer_interrupted_keeps_previous_object(self, backend: Backend) -> None:
        store = backend.store
        store.put("w/keep", b"previous")
        with pytest.raises(RuntimeError), store.writer("w/keep") as f:
            f.write(b"half of the new content")
            raise RuntimeError("boom")
        assert store.get("w/keep") == b"previous"
        assert list(store.list("w")) == ["w/keep"]

    def test_writer_large_interrupted_leaves_no_object(self, backend: Backend) -> None:
        store = backend.store
        with pytest.raises(RuntimeError), store.writer("big/aborted") as f:
            f.write(big_payload())
            raise RuntimeError("boom")
        assert not store.exists("big/aborted")

    def test_writer_stores_everything_written_even_after_seeking_back(self, backend: Backend) -> None:
        # e.g. a writer that patches a header (a row count) once the body is written
        with backend.store.writer("w/patched") as f:
            f.write(b"rows=?\n")
            f.write(b"a\nb\nc\n")
            f.seek(5)
            f.write(b"3")
        assert backend.store.get("w/patched") == b"rows=3\na\nb\nc\n"

    # ---- copy_to ---------------------------------------------------------------------------

    def test_copy_to(self, backend: Backend) -> None:
        backend.store.put("c/x", b"copied bytes")
        out = io.BytesIO()
        backend.store.copy_to("c/x", out)
        assert out.getvalue() == b"copied bytes"

    def test_copy_to_missing_raises_object_not_found(self, backend: Backend) -> None:
        with pytest.raises(ObjectNotFoundError):
            backend.store.copy_to("c/missing", io.BytesIO())

    def test_copy_to_of_a_prefix_raises_object_not_found(self, backend: Backend) -> None:
        backend.store.put("c/dir/child", b"x")
        with pytest.raises(ObjectNotFoundError):
            backend.store.copy_to("c/dir", io.BytesIO())

    def test_delete_of_a_prefix_is_a_no_op(self, backend: Backend) -> None:
        backend.store.put("p/dir/child", b"x")
        backend.store.delete("p/dir")
        assert backend.store.get("p/dir/child") == b"x"

    # ---- key validation --------------------------------------------------------------------

    @pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
    def test_bad_keys_are_refused(self, backend: Backend, key: str) -> None:
        assert_every_operation_refuses(backend.store, key)
        assert list(backend.outer.list("")) == []

    @pytest.mark.parametrize("key", ["../escape", "/abs", "a/../b"], ids=repr)
    def test_writer_refuses_bad_key_before_the_block_runs(self, backend: Backend, key: str) -> None:
        ran = False
        with pytest.raises(InvalidKeyError), backend.store.writer(key) as f:
            ran = True
            f.write(b"x")
        assert not ran, "the with-block ran (and buffered its data) before the key was refused"

    def test_url_names_the_key(self, backend: Backend) -> None:
        assert backend.store.url("a/b.png").endswith("a/b.png")


# ------------------------------------------------------------------------------------------------
# LocalStorage


@pytest.fixture(params=["plain", "prefixed"])
def local_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    root = tmp_path / "root"
    root.mkdir()
    outer = LocalStorage(root)
    prefix = "" if request.param == "plain" else PREFIX
    base = root / prefix if prefix else root
    return Backend(LocalStorage(base), outer, prefix, lambda p: LocalStorage(base / p))


class TestLocalStorageContract(StorageContract):
    @pytest.fixture
    def backend(self, local_backend: Backend) -> Backend:
        return local_backend


class TestLocalStorageOnly:
    """Filesystem-specific behaviour: symlinks, temporary files, URLs."""

    @pytest.fixture
    def root(self, tmp_path: Path) -> Path:
        root = tmp_path / "root"
        root.mkdir()
        return root

    @pytest.fixture
    def outside(self, tmp_path: Path) -> Path:
        outside = tmp_path / "outside"
        outside.mkdir()
        (outside / "secret").write_bytes(b"secret")
        return outside

    def test_symlinked_directory_outside_root_is_refused(self, root: Path, outside: Path) -> None:
        (root / "link").symlink_to(outside, target_is_directory=True)
        store = LocalStorage(root)
        for op in (
            lambda: store.get("link/secret"),
            lambda: store.exists("link/secret"),
            lambda: store.put("link/new", b"x"),
            lambda: store.delete("link/secret"),
            lambda: store.copy_to("link/secret", io.BytesIO()),
            lambda: list(store.list("link")),
        ):
            with pytest.raises(InvalidKeyError):
                op()
        with pytest.raises(InvalidKeyError), store.writer("link/streamed") as f:
            f.write(b"x")
        assert sorted(p.name for p in outside.iterdir()) == ["secret"]
        assert (outside / "secret").read_bytes() == b"secret"

    def test_symlinked_file_outside_root_is_refused(self, root: Path, outside: Path) -> None:
        (root / "file").symlink_to(outside / "secret")
        store = LocalStorage(root)
        with pytest.raises(InvalidKeyError):
            store.get("file")
        with pytest.raises(InvalidKeyError):
            store.put("file", b"overwrite")
        with pytest.raises(InvalidKeyError):
            store.delete("file")
        assert (outside / "secret").read_bytes() == b"secret"

    def test_a_source_reads_a_symlinked_file_outside_its_folder_and_never_writes_through_it(
            self, root: Path, outside: Path) -> None:
        """A user's input folder may link to files elsewhere (a dataset assembled from a read-only
        mount): opened as a source it reads them; writes still never leave the folder."""
        (root / "file").symlink_to(outside / "secret")
        source = LocalStorage(root).following_links()
        assert source.get("file") == b"secret"
        assert source.exists("file") and list(source.list("")) == ["file"]
        for op in (lambda: source.put("file", b"overwrite"), lambda: source.delete("file")):
            with pytest.raises(InvalidKeyError):
                op()
        assert (outside / "secret").read_bytes() == b"secret"

    def test_a_dangling_or_looping_symlink_is_listed_with_why_it_cannot_be_read(self, root: Path) -> None:
        (root / "moved").symlink_to(root / "moved-away")
        (root / "loop").symlink_to(root / "loop")
        (root / "real").write_bytes(b"1")
        store = LocalStorage(root).following_links()
        assert list(store.list("")) == ["loop", "moved", "real"]
        assert "does not exist" in store.unreadable_reason("moved")
        assert "cannot be followed" in store.unreadable_reason("loop")
        assert store.unreadable_reason("real") is None

    def test_a_full_disk_is_one_clear_error_and_leaves_nothing_behind(self, root: Path, monkeypatch) -> None:
        import errno
        import os

        from workers.errors import StorageFullError

        def full(fd: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        store = LocalStorage(root)
        store.put("a/kept", b"old")
        monkeypatch.setattr(os, "fsync", full)
        with pytest.raises(StorageFullError, match="no space left .* free space"):
            store.put("a/kept", b"new")
        assert store.get("a/kept") == b"old" and sorted(p.name for p in (root / "a").iterdir()) == ["kept"]

    def test_symlink_inside_root_is_allowed(self, root: Path) -> None:
        (root / "real").mkdir()
        (root / "alias").symlink_to(root / "real", target_is_directory=True)
        store = LocalStorage(root)
        store.put("alias/x", b"via alias")
        assert store.get("real/x") == b"via alias"

    def test_root_reached_through_a_symlink_works(self, tmp_path: Path, root: Path) -> None:
        link = tmp_path / "root-link"
        link.symlink_to(root, target_is_directory=True)
        store = LocalStorage(link)
        store.put("a/b", b"1")
        assert (root / "a" / "b").read_bytes() == b"1"
        assert list(store.list("")) == ["a/b"]

    @pytest.mark.parametrize("exc_type", [RuntimeError, KeyboardInterrupt])
    def test_interrupted_writer_leaves_no_partial_file(self, root: Path, exc_type: type[BaseException]) -> None:
        store = LocalStorage(root)
        with pytest.raises(exc_type), store.writer("runs/r/submission.csv") as f:
            f.write(b"a,b\n" * 10_000)
            tmp_files = [p for p in (root / "runs" / "r").iterdir()]
            assert len(tmp_files) == 1 and tmp_files[0].name.startswith(".tmp-")
            raise exc_type("boom")
        assert list((root / "runs" / "r").iterdir()) == []

    def test_leftover_temp_files_are_not_listed(self, root: Path) -> None:
        store = LocalStorage(root)
        store.put("d/real", b"1")
        (root / "d" / ".tmp-abc123").write_bytes(b"from a crashed writer")
        assert list(store.list("")) == ["d/real"]
        assert list(store.list("d")) == ["d/real"]

    def test_writer_replaces_atomically(self, root: Path) -> None:
        store = LocalStorage(root)
        store.put("k", b"old")
        with store.writer("k") as f:
            f.write(b"new")
            assert (root / "k").read_bytes() == b"old"
        assert (root / "k").read_bytes() == b"new"

    def test_no_key_prefix_counts_towards_a_length_limit(self, root: Path) -> None:
        assert LocalStorage(root / "a" / "b").key_prefix == ""  # limits are per path segment

    def test_url_is_the_file_path(self, root: Path) -> None:
        assert LocalStorage(root).url("a/b.png") == str(root.resolve() / "a" / "b.png")

    def test_factory_opens_paths_and_file_urls(self, root: Path) -> None:
        factory = StorageFactory(Settings(storage_url=str(root)))
        for url in (str(root), storage_url_for(root)):
            store = factory.open(url)
            assert isinstance(store, LocalStorage)
            assert store.root == root.resolve()
        assert storage_url_for(root).startswith("file:///")


# ---- fetch_in_order --------------------------------------------------------------------------


@pytest.mark.parametrize("threads", [1, 2, 8])
def test_fetch_in_order_keeps_order_and_bounds_what_is_in_flight(threads: int) -> None:
    import random
    import threading
    import time

    from workers.io.storage import fetch_in_order

    lock, running, most = threading.Lock(), [0], [0]

    def fetch(i: int) -> int:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(random.random() / 500)  # finish out of order
        with lock:
            running[0] -= 1
        return i * i

    assert list(fetch_in_order(fetch, range(200), threads)) == [i * i for i in range(200)]
    assert most[0] <= threads


def test_fetch_in_order_raises_the_first_error_in_order_and_stops() -> None:
    from workers.io.storage import fetch_in_order

    started: list[int] = []

    def fetch(i: int) -> int:
        started.append(i)
        if i in (3, 5):
            raise ObjectNotFoundError(f"missing {i}")
        return i

    results = fetch_in_order(fetch, range(10_000), threads=4)
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ObjectNotFoundError, match="missing 3"):
        next(results)
    assert len(started) < 100  # a bounded window, not the whole input


def test_storage_backends_by_scheme(tmp_path: Path) -> None:
    from workers.io.storage import BACKENDS, backend_class, is_local, scheme_of

    assert scheme_of("s3://bucket/x") == "s3" and scheme_of("file:///tmp") == "file" and scheme_of("runs/") == "file"
    assert is_local(str(tmp_path)) and not is_local("s3://b")
    assert set(BACKENDS) == {"file", "s3"} and backend_class("file") is LocalStorage
    with pytest.raises(ConfigError, match="No such storage backend: s4. Did you mean s3?"):
        StorageFactory(Settings()).open("s4://bucket/prefix")
    spaced = tmp_path / "with space"
    spaced.mkdir()
    opened = StorageFactory(Settings()).open(storage_url_for(spaced))  # manifests record percent-encoded URLs
    assert opened.root == spaced.resolve() and opened.root_url == storage_url_for(spaced)
