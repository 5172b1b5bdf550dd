"""How much work each queue holds, for autoscalers: the messages waiting in its Redis list plus those
delivered to a worker and not yet acknowledged (prefetched, running, or a retry waiting for its
ETA), which kombu moves out of the list into its ``unacked`` hash.

A queue's list alone undercounts a busy pool: a GPU worker prefetches a whole batch, so under load
most of the work is in no list, and an autoscaler watching the list length scales a busy pool
down. KEDA's metrics-api scaler reads :func:`backlog` from this server instead::

    python -m workers.runtime.queue_metrics --port 9808     # BROKER_URL, REDIS_PASSWORD as for workers

    GET /backlog   {"gpu": {"waiting": 40, "reserved": 8, "backlog": 48}, "cpu": {...}, ...}
    GET /metrics   the same in Prometheus' text format (lowlight_queue_messages{queue,state})
    GET /healthz   200 while Redis answers
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import redis

from workers.runtime.app import QUEUES
from workers.runtime.broker import UNACKED
from workers.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueueDepth:
    waiting: int  # in the queue's list
    reserved: int  # delivered to a worker, not yet acknowledged

    @property
    def backlog(self) -> int:
        return self.waiting + self.reserved


def queue_depths(client: redis.Redis, queues: tuple[str, ...] = QUEUES) -> dict[str, QueueDepth]:
    """Each queue's waiting and reserved messages. The unacknowledged hash is as large as what the
    workers hold (their prefetch and their ETA retries), read in one pass."""
    with client.pipeline(transaction=False) as pipe:
        for queue in queues:
            pipe.llen(queue)
        lengths = pipe.execute()
    reserved: Counter[str] = Counter()
    for _, raw in client.hscan_iter(UNACKED, count=1000):
        try:
            reserved[json.loads(raw)[2]] += 1  # [message, exchange, routing key]: our routing key is the queue
        except (ValueError, IndexError, TypeError):
            continue
    return {queue: QueueDepth(int(length), reserved[queue]) for queue, length in zip(queues, lengths, strict=True)}


def backlog(client: redis.Redis) -> dict[str, dict[str, int]]:
    return {queue: {**asdict(depth), "backlog": depth.backlog} for queue, depth in queue_depths(client).items()}


def prometheus_text(depths: dict[str, dict[str, int]]) -> str:
    lines = [
        "# HELP lowlight_queue_messages Messages of a Celery queue: waiting in its list, or reserved by a "
        "worker (delivered, not acknowledged).",
        "# TYPE lowlight_queue_messages gauge",
    ]
    for queue, depth in depths.items():
        lines += [
            f'lowlight_queue_messages{{queue="{queue}",state="{state}"}} {depth[state]}'
            for state in ("waiting", "reserved")
        ]
    lines += [
        "# HELP lowlight_queue_backlog Waiting plus reserved messages of a Celery queue.",
        "# TYPE lowlight_queue_backlog gauge",
    ]
    lines += [f'lowlight_queue_backlog{{queue="{queue}"}} {depth["backlog"]}' for queue, depth in depths.items()]
    return "\n".join(lines) + "\n"


def make_server(client: redis.Redis, host: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            try:
                if self.path == "/backlog":
                    self._answer(200, "application/json", json.dumps(backlog(client)))
                elif self.path == "/metrics":
                    self._answer(200, "text/plain; version=0.0.4", prometheus_text(backlog(client)))
                elif self.path == "/healthz":
                    client.ping()
                    self._answer(200, "text/plain", "ok\n")
                else:
                    self._answer(404, "text/plain", "not found\n")
            except redis.RedisError as exc:
                # An autoscaler must see an error, never a zero that scales a busy pool down.
                self._answer(503, "text/plain", f"Redis: {exc}\n")

        def _answer(self, status: int, kind: str, body: str) -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
            logger.debug(format, *args)

    return ThreadingHTTPServer((host, port), Handler)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Serve each Celery queue's waiting + reserved messages for autoscalers."
    )
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: every interface)")
    parser.add_argument("--port", type=int, default=9808, help="port to listen on (default: 9808)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Short timeouts, no retries: a scaler polling every few seconds wants an answer or an error now.
    client = redis.Redis.from_url(
        Settings.from_env().broker_url_with_password, socket_timeout=5, socket_connect_timeout=5
    )
    server = make_server(client, args.host, args.port)
    logger.info("serving queue backlogs on %s:%d (/backlog, /metrics)", args.host, args.port)
    server.serve_forever()


if __name__ == "__main__":
    main()
