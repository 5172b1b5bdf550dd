"""Which worker process holds which image of a run right now: one Redis hash per run.

A delivery claims its image before the heavy part of its stage and releases it with its outcome
(done, failed, handed on, retried later). A GPU worker also marks the images of each forward pass
just before it runs, with how many images share it. What a hold that outlived its process says:

* ``batch`` 0: the process held the message but had not started on the image: not the image's
  fault, no death; its message is sent on;
* ``batch`` n > 0: the process died computing the image with n - 1 others: a death for each; with
  others, the image runs alone from then on (see :mod:`workers.run.attempts`).

Holds live in Redis with the messages they describe: if Redis forgets everything, it forgets the
queued and unacknowledged messages too, and the sweep rebuilds the run from storage. Every change
is a compare-and-set on the holder's token, so a late release never drops a newer claim.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace

from workers.runtime.liveness import Holder

SEP = "\t"  # between a hold's token and its JSON: the Lua scripts compare the prefix


@dataclass(frozen=True)
class Hold:
    """One image held by one process at one stage."""

    name: str
    stage: str
    task_id: str  # the message's task id: what the sweep looks for among unacknowledged messages
    holder: Holder
    since: float  # epoch seconds of the claim
    batch: int = 0  # images in the forward pass it is in (0: held, not started)

    def encode(self) -> str:
        body = {"stage": self.stage, "task": self.task_id, "holder": json.loads(self.holder.to_json()),
                "since": self.since, "batch": self.batch}
        return self.holder.token + SEP + json.dumps(body, separators=(",", ":"))

    @classmethod
    def decode(cls, name: str, raw: str | bytes) -> Hold:
        text = raw.decode() if isinstance(raw, bytes) else raw
        body = json.loads(text.partition(SEP)[2])
        return cls(name, body["stage"], body["task"], Holder(**body["holder"]), float(body["since"]),
                   int(body["batch"]))

    def computing(self, batch: int) -> Hold:
        return replace(self, batch=batch)


def new_hold(name: str, stage: str, task_id: str, holder: Holder) -> Hold:
    return Hold(name, stage, task_id, holder, time.time())


# KEYS: held hash, cancelled flag, attempts cache. ARGV: token, stage, ttl, then name/value pairs.
# Claims every image not held by another token (re-claiming one's own is fine) and returns, per
# image, the other token's hold ('' when claimed) and the cached attempts record ('' when none).
# A cancelled run claims nothing: {1}.
CLAIM = """
if redis.call('EXISTS', KEYS[2]) == 1 then
    return {1}
end
local prefix = ARGV[1] .. '\\t'
local out = {0}
for i = 4, #ARGV, 2 do
    local name = ARGV[i]
    local current = redis.call('HGET', KEYS[1], name)
    if current and string.sub(current, 1, #prefix) ~= prefix then
        table.insert(out, current)
    else
        redis.call('HSET', KEYS[1], name, ARGV[i + 1])
        table.insert(out, '')
    end
    table.insert(out, redis.call('HGET', KEYS[3], ARGV[2] .. ':' .. name) or '')
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return out
"""

# KEYS: held hash. ARGV: name, the exact hold expected, the new value ('' deletes). 1 if swapped.
SWAP = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then
    return 0
end
if ARGV[3] == '' then
    redis.call('HDEL', KEYS[1], ARGV[1])
else
    redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
end
return 1
"""

# KEYS: held hash. ARGV: token, then names (release) or name/value pairs (update). Only holds of
# that token change: a process never drops or rewrites a hold another one took over.
RELEASE = """
local prefix = ARGV[1] .. '\\t'
for i = 2, #ARGV do
    local current = redis.call('HGET', KEYS[1], ARGV[i])
    if current and string.sub(current, 1, #prefix) == prefix then
        redis.call('HDEL', KEYS[1], ARGV[i])
    end
end
return 0
"""

UPDATE = """
local prefix = ARGV[1] .. '\\t'
for i = 2, #ARGV, 2 do
    local current = redis.call('HGET', KEYS[1], ARGV[i])
    if current and string.sub(current, 1, #prefix) == prefix then
        redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    end
end
return 0
"""
