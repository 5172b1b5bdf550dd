"""S3Storage against a real S3 server (SeaweedFS ``weed mini`` on 127.0.0.1, see testbed/servers.py).

The shared behaviours come from :class:`tests.test_storage_local.StorageContract`; this module adds
what only S3 has: credentials, endpoints, outages, the spooled writer, the client factory.
"""

from __future__ import annotations

import io
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from testbed.servers import S3Server, free_port
from tests.test_storage_local import (
    BAD_KEYS,
    BIG,
    PREFIX,
    Backend,
    StorageContract,
    assert_every_operation_refuses,
    big_payload,
)
from workers.errors import ConfigError, InvalidKeyError, StorageUnavailableError
from workers.io.storage import StorageFactory
from workers.io.storage.s3 import S3Storage, parse_s3_url
from workers.settings import Settings

# Tests that start the session's weed server; the others need no server at all.
integration = pytest.mark.integration


def s3_settings_for(server: S3Server, bucket: str, **changes: object) -> Settings:
    values = dict(
        storage_url=f"s3://{bucket}",
        s3_endpoint=server.endpoint,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
    )
    values.update(changes)
    return Settings(**values)


def open_store(settings: Settings, url: str | None = None) -> S3Storage:
    store = StorageFactory(settings).open(url or settings.storage_url)
    assert isinstance(store, S3Storage)
    return store


@pytest.fixture(params=["plain", "prefixed"])
def s3_backend(request: pytest.FixtureRequest, s3_server: S3Server, s3_bucket: str) -> Backend:
    factory = StorageFactory(s3_settings_for(s3_server, s3_bucket))
    outer = factory.open(f"s3://{s3_bucket}")
    prefix = "" if request.param == "plain" else PREFIX
    base = f"s3://{s3_bucket}/{prefix}".rstrip("/")
    return Backend(factory.open(base), outer, prefix, lambda p: factory.open(f"{base}/{p}"))


@integration
class TestS3StorageContract(StorageContract):
    @pytest.fixture
    def backend(self, s3_backend: Backend) -> Backend:
        return s3_backend


# ------------------------------------------------------------------------------------------------
# S3-only behaviour


class _NoCalls:
    """A stand-in client: any use of it fails the test."""

    def __getattr__(self, name: str) -> object:
        def call(*args: object, **kwargs: object) -> None:
            raise AssertionError(f"S3 client called ({name}) although the key is invalid")

        return call


@pytest.mark.parametrize("prefix", ["", PREFIX])
@pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
def test_bad_keys_refused_before_any_request(key: str, prefix: str) -> None:
    assert_every_operation_refuses(S3Storage(_NoCalls(), "bucket", prefix), key)


@integration
def test_writer_spools_large_objects_to_disk(s3_settings: Settings) -> None:
    store = open_store(s3_settings)
    with store.writer("big/spooled") as f:
        f.write(b"x" * 1024)
        assert not getattr(f, "_rolled", False), "small writes should stay in memory"
        f.write(big_payload(BIG))
        assert getattr(f, "_rolled", True), "writes past 16 MiB should spool to a temporary file"
    assert store.client.stat_object(store.bucket, "big/spooled").size == BIG + 1024


@integration
def test_objects_are_where_the_url_says(s3_server: S3Server, s3_settings: Settings, s3_bucket: str) -> None:
    store = open_store(s3_settings, f"s3://{s3_bucket}/{PREFIX}")
    store.put("a/b.png", b"png")
    assert store.url("a/b.png") == f"s3://{s3_bucket}/{PREFIX}/a/b.png"
    raw = s3_server.client().get_object(s3_bucket, f"{PREFIX}/a/b.png")
    try:
        assert raw.read() == b"png"
    finally:
        raw.close()
        raw.release_conn()


@integration
def test_factory_shares_one_client(s3_settings: Settings, s3_bucket: str) -> None:
    factory = StorageFactory(s3_settings)
    a = factory.open(f"s3://{s3_bucket}")
    b = factory.open(f"s3://{s3_bucket}/{PREFIX}")
    assert isinstance(a, S3Storage) and isinstance(b, S3Storage)
    assert a.client is b.client
    assert (b.bucket, b.prefix) == (s3_bucket, PREFIX)
    assert (a.key_prefix, b.key_prefix) == ("", PREFIX)  # what counts towards S3's key length


@pytest.mark.parametrize(
    "url", ["s3://", "s3:///prefix", "http://bucket/x", "s3://bucket/../x", "s3://bucket/a//b"]
)
def test_bad_s3_urls(url: str) -> None:
    with pytest.raises((ConfigError, InvalidKeyError)):
        parse_s3_url(url)


def test_parse_s3_url() -> None:
    assert parse_s3_url("s3://bucket") == ("bucket", "")
    assert parse_s3_url("s3://bucket/") == ("bucket", "")
    assert parse_s3_url("s3://bucket/some/prefix/") == ("bucket", "some/prefix")


# ---- configuration errors ----------------------------------------------------------------------


def _assert_names_credential_vars(exc: BaseException) -> None:
    message = str(exc)
    assert "AWS_ACCESS_KEY_ID" in message and "AWS_SECRET_ACCESS_KEY" in message, message


@integration
def test_missing_credentials_raise_config_error(s3_server: S3Server, s3_bucket: str) -> None:
    settings = s3_settings_for(s3_server, s3_bucket, aws_access_key_id="", aws_secret_access_key="")
    with pytest.raises(ConfigError) as info:
        open_store(settings)
    _assert_names_credential_vars(info.value)


@integration
@pytest.mark.parametrize("which", ["access_key", "secret_key"])
def test_wrong_credentials_raise_config_error(s3_server: S3Server, s3_bucket: str, which: str) -> None:
    changes = {"aws_access_key_id": "wrong-key"} if which == "access_key" else {"aws_secret_access_key": "wrong-secret"}
    # The bucket holds an object, so a refusal cannot be mistaken for "not found".
    open_store(s3_settings_for(s3_server, s3_bucket)).put("k", b"v")
    store = open_store(s3_settings_for(s3_server, s3_bucket, **changes))
    for op in (
        lambda: store.get("k"),
        lambda: store.put("k2", b"v"),
        lambda: store.exists("k"),
        lambda: list(store.list("any")),
        lambda: store.delete("k"),
        lambda: store.copy_to("k", io.BytesIO()),
    ):
        with pytest.raises(ConfigError) as info:
            op()
        _assert_names_credential_vars(info.value)
    with pytest.raises(ConfigError), store.writer("k3") as f:
        f.write(b"v")
    assert open_store(s3_settings_for(s3_server, s3_bucket)).get("k") == b"v"


@integration
def test_missing_bucket_raises_config_error(s3_server: S3Server) -> None:
    store = open_store(s3_settings_for(s3_server, "no-such-bucket-here"))
    with pytest.raises(ConfigError, match="STORAGE_URL"):
        store.put("k", b"v")
    with pytest.raises(ConfigError):
        store.get("k")


# ---- outages -----------------------------------------------------------------------------------


def _unreachable_store(prefix: str = "") -> S3Storage:
    port = free_port()  # nothing listens there
    settings = Settings(
        storage_url="s3://bucket" + (f"/{prefix}" if prefix else ""),
        s3_endpoint=f"127.0.0.1:{port}",
        aws_access_key_id="k",
        aws_secret_access_key="s",
    )
    return open_store(settings)


UNREACHABLE_OPS = {
    "get": lambda s: s.get("k"),
    "put": lambda s: s.put("k", b"v"),
    "exists": lambda s: s.exists("k"),
    "list": lambda s: list(s.list("runs")),
    "delete": lambda s: s.delete("k"),
    "copy_to": lambda s: s.copy_to("k", io.BytesIO()),
    "writer": lambda s: _write(s, "k", b"v"),
}


def _write(store: S3Storage, key: str, data: bytes) -> None:
    with store.writer(key) as f:
        f.write(data)


@pytest.mark.parametrize("prefix", ["", PREFIX])
@pytest.mark.parametrize("op", sorted(UNREACHABLE_OPS))
def test_unreachable_endpoint_raises_storage_unavailable_quickly(op: str, prefix: str) -> None:
    store = _unreachable_store(prefix)
    started = time.monotonic()
    with pytest.raises(StorageUnavailableError, match="unreachable"):
        UNREACHABLE_OPS[op](store)
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("prefix", ["", PREFIX])
def test_unreachable_endpoint_list_everything(prefix: str) -> None:
    store = _unreachable_store(prefix)
    with pytest.raises(StorageUnavailableError):
        list(store.list(""))


def _serve_non_s3(status: int) -> tuple[ThreadingHTTPServer, str]:
    """A plain HTTP server on 127.0.0.1 answering every request with ``status`` and a text body."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            body = b"" if self.command == "HEAD" else b"not an S3 server"
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"127.0.0.1:{server.server_address[1]}"


@pytest.mark.parametrize("op", ["get", "put", "list"])
def test_non_s3_answer_is_mapped_to_a_storage_error(op: str) -> None:
    server, endpoint = _serve_non_s3(429)
    try:
        store = open_store(
            Settings(storage_url="s3://bucket", s3_endpoint=endpoint, s3_region="us-east-1",
                     aws_access_key_id="k", aws_secret_access_key="s")
        )
        with pytest.raises((StorageUnavailableError, ConfigError)):
            UNREACHABLE_OPS[op](store)
    finally:
        server.shutdown()
        server.server_close()


@integration
def test_outage_then_recovery(s3_server: S3Server, s3_settings: Settings) -> None:
    store = open_store(s3_settings)
    store.put("before", b"1")
    s3_server.stop()
    try:
        started = time.monotonic()
        with pytest.raises(StorageUnavailableError):
            store.get("before")
        with pytest.raises(StorageUnavailableError):
            store.put("during", b"2")
        assert time.monotonic() - started < 30
    finally:
        s3_server.start()
    # The same storage (and its pooled client) works again once the server is back.
    assert store.get("before") == b"1"
    store.put("after", b"3")
    assert list(store.list("")) == ["after", "before"]
