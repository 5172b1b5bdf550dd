"""What the broker holds for a run: its image messages waiting in the queues, and those delivered to
a worker and not yet acknowledged (kombu's Redis transport keeps them in the ``unacked`` hash until
the visibility timeout). The recovery sweep asks before it sends anything, so it never adds a
second message for an image whose first is only waiting its turn.

* :func:`queued_images` reads the queues in chunks with a server-side filter (only messages that
  name one of the runs come back); it is asked only about runs that stalled, at most once per
  STALL_AFTER_S each. :func:`unacked_messages` reads the unacknowledged ones (as many as the
  workers prefetch and hold for retries: small), with when each was delivered and is due.
* :func:`restore` hands an unacknowledged message back to the front of its queue through kombu's
  own restore (the one it runs after the visibility timeout), at once: a dead worker's, or one that
  nobody started within STALL_AFTER_S.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from celery import Celery

logger = logging.getLogger(__name__)

UNACKED = "unacked"  # kombu's Redis transport: delivery tag -> [message, exchange, routing key]
UNACKED_INDEX = "unacked_index"  # delivery tag -> when it was delivered (the consumer's clock)
CHUNK = 2000  # queue entries per filtered read: a few milliseconds of Redis time each

# KEYS: a queue. ARGV: first index, last index, then needles. The bodies of the messages in that
# range whose raw text contains a needle (a quoted run id, which only the argsrepr header shows:
# the body itself is base64). Filtering in Redis keeps a big backlog's other runs off the wire.
_FILTER = """
local out = {}
for _, m in ipairs(redis.call('LRANGE', KEYS[1], ARGV[1], ARGV[2])) do
    for i = 3, #ARGV do
        if string.find(m, ARGV[i], 1, true) then
            table.insert(out, string.match(m, '"body": "([^"]*)"') or '')
            break
        end
    end
end
return out
"""


@dataclass(frozen=True)
class Message:
    """An image message as the broker stores it."""

    task_id: str
    run_id: str
    name: str


@dataclass(frozen=True)
class Delivery:
    """An image message delivered to a worker and not yet acknowledged."""

    tag: bytes
    message: Message
    at: float  # when it was delivered (the consumer's clock)
    eta: float = 0.0  # when a retry sent with a countdown is due (0: at once)

    @property
    def due(self) -> float:
        """When its consumer should have started on it: delivered, or its ETA if later."""
        return max(self.at, self.eta)


def image_args(body_b64: str) -> tuple[str, str] | None:
    """(run id, name) from a message body (base64 JSON ``[args, kwargs, embed]``), None for any other."""
    try:
        args = json.loads(base64.b64decode(body_b64))[0]
    except (ValueError, binascii.Error, IndexError, KeyError, TypeError):
        return None
    if isinstance(args, list) and len(args) == 2 and all(isinstance(a, str) for a in args):
        return args[0], args[1]
    return None


def message_eta(message: Any) -> float:
    """A kombu message's ETA header as epoch seconds (0.0 when it has none, or an unreadable one)."""
    try:
        text = message["headers"].get("eta")
        return datetime.fromisoformat(text).timestamp() if text else 0.0
    except (KeyError, TypeError, AttributeError, ValueError):
        return 0.0


def image_message(message: Any) -> Message | None:
    """A kombu message (decoded JSON) as an image message, or None (another task, malformed)."""
    try:
        task_id = message["headers"]["id"]
        args = image_args(message["body"])
    except (KeyError, TypeError):
        return None
    return Message(task_id, *args) if args else None


def unacked_messages(client: redis.Redis) -> list[Delivery]:
    """Every image message delivered and not yet acknowledged (as many as the workers prefetch)."""
    with client.pipeline(transaction=False) as pipe:
        pipe.hgetall(UNACKED)
        pipe.zrange(UNACKED_INDEX, 0, -1, withscores=True)
        raw_by_tag, scores = pipe.execute()
    delivered_at = dict(scores)
    found = []
    for tag, raw in raw_by_tag.items():
        try:
            body = json.loads(raw)[0]
        except (ValueError, IndexError, TypeError):
            continue
        message = image_message(body)
        if message is not None:
            found.append(Delivery(tag, message, float(delivered_at.get(tag, 0.0)), message_eta(body)))
    return found


def queued_images(client: redis.Redis, queues: Iterable[str], run_ids: Iterable[str]) -> dict[str, set[str]]:
    """Run id -> names with a message waiting in ``queues`` (any stage)."""
    run_ids = list(run_ids)
    found: dict[str, set[str]] = defaultdict(set)
    if not run_ids:
        return found
    wanted = set(run_ids)
    needles = [f"'{run_id}'" for run_id in run_ids]
    scan = client.register_script(_FILTER)
    for queue in queues:
        start = 0
        # Producers push on the left and workers pop on the right, so reading left to right from
        # index 0 never skips an entry that stays in the list: new pushes only move entries up.
        while start < client.llen(queue):
            for body in scan(keys=[queue], args=[start, start + CHUNK - 1, *needles]):
                args = image_args(body.decode())
                if args and args[0] in wanted:
                    found[args[0]].add(args[1])
            start += CHUNK
    return found


def restore(app: Celery, tag: bytes) -> None:
    """Put an unacknowledged message back at the front of its queue now, with kombu's own restore
    (a transaction on the ``unacked`` hash: two sweeps restoring one tag push it once)."""
    with app.connection_for_write() as connection:
        connection.default_channel.qos.restore_by_tag(tag, leftmost=False)
