"""A TCP proxy on 127.0.0.1 in front of one server, for the benchmarks: it adds a delay per request and
counts the HTTP requests that pass through it.

``TcpProxy("127.0.0.1:8333", delay_s=0.002)`` holds each chunk a client sends for 2 ms before passing it
on: one simulated network round trip per request, as between a worker and a remote MinIO. Whatever the
delay, ``requests`` counts the HTTP/1.1 request lines clients send (one per S3 call). The proxy runs its
own asyncio loop on a daemon thread, so synchronous code (boto-like clients, Celery workers pointed at
``proxy.endpoint``) goes through it unchanged.
"""

from __future__ import annotations

import asyncio
import threading

CHUNK = 65536
REQUEST_LINE_END = b" HTTP/1.1\r\n"  # ends every request line (``METHOD /path HTTP/1.1``)


class TcpProxy:
    """Forwards every connection to ``target`` ("host:port"); listens on a free port of 127.0.0.1."""

    def __init__(self, target: str, delay_s: float = 0.0) -> None:
        host, port = target.rsplit(":", 1)
        self.target, self.delay_s = (host, int(port)), delay_s
        self.requests = 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        if not self.ready.wait(10):
            raise RuntimeError(f"the proxy in front of {target} did not start")

    @property
    def endpoint(self) -> str:
        """Where clients connect instead of ``target``: ``127.0.0.1:<port>``."""
        return f"127.0.0.1:{self.port}"

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._connect, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()

    async def _connect(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
            await asyncio.gather(self._pump(client_r, server_w, upstream=True), self._pump(server_r, client_w))
        except (ConnectionError, asyncio.CancelledError):  # the client or close() ended it: nothing to report
            client_w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: bool = False) -> None:
        """Copy ``reader`` to ``writer``; ``upstream`` (client to server): count requests and delay each chunk."""
        tail = b""  # the end of the previous chunk: a request line split across two chunks is counted once
        try:
            while chunk := await reader.read(CHUNK):
                if upstream:
                    seen = tail + chunk
                    self.requests += seen.count(REQUEST_LINE_END) - tail.count(REQUEST_LINE_END)
                    tail = seen[-len(REQUEST_LINE_END) :]
                    if self.delay_s:
                        await asyncio.sleep(self.delay_s)
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        """Stop listening, end every connection and the loop's thread."""

        async def shutdown() -> None:
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
