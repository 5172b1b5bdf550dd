"""testbed/proxy.py: the benchmarks' TCP proxy passes bytes unchanged both ways, counts HTTP requests
(a request line split across two sends included) and holds each client chunk for its delay."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from testbed.proxy import TcpProxy


class Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def echo_server() -> Iterator[str]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def exchange(endpoint: str, *sends: bytes) -> bytes:
    """Send each piece (waiting for its echo), return everything that came back."""
    host, port = endpoint.split(":")
    received = b""
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        for piece in sends:
            conn.sendall(piece)
            expected = len(received) + len(piece)
            while len(received) < expected:
                received += conn.recv(65536)
    return received


def test_bytes_pass_unchanged_and_each_request_line_counts_once(echo_server):
    requests = [b"GET /bucket/a HTTP/1.1\r\nHost: x\r\n\r\n", b"PUT /bucket/b HTTP/", b"1.1\r\n\r\nbody"]
    with TcpProxy(echo_server) as proxy:
        assert exchange(proxy.endpoint, *requests) == b"".join(requests)
        assert exchange(proxy.endpoint, b"HEAD /bucket/c HTTP/1.1\r\n\r\n")
        assert proxy.requests == 3


def test_each_client_chunk_waits_for_the_delay(echo_server):
    with TcpProxy(echo_server, delay_s=0.2) as proxy:
        started = time.perf_counter()
        exchange(proxy.endpoint, b"GET / HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n")
        assert time.perf_counter() - started >= 0.4
        assert proxy.requests == 2
