"""Which worker processes are alive, so that "started by a worker that is gone" can be told from
"still being worked on".

Every worker process that takes images has an identity (:class:`Holder`): a random token drawn
when the process starts, its Celery node name for messages, and where it runs. It proves it is
alive two ways:

* a heartbeat key in Redis (``lowlight:proc:<token>``), refreshed four times per STALL_AFTER_S
  and expiring after STALL_AFTER_S: what a process on another machine or in another container
  can check;
* its pid, on its own machine: a process in the same pid namespace of the same boot sees at once
  whether the pid still runs the same process (its start time tells a reused pid apart), with no
  waiting for a heartbeat to expire. A prefork child killed by the kernel is known dead this way
  before its requeued message reaches a sibling.

A token is drawn per process start, so a container restarted in place (same hostname, often the
same pid) is never mistaken for the process it replaces.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import redis

logger = logging.getLogger(__name__)

KEY_PREFIX = "lowlight:proc"


@dataclass(frozen=True)
class Holder:
    """A worker process that can hold images."""

    token: str  # drawn at process start
    node: str  # the Celery node name ("gpu@host-2"), for reasons and logs
    machine: str  # boot id and pid namespace: processes with the same value see each other's pids
    pid: int
    started: str  # start time of the pid, in clock ticks since boot

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Holder:
        return cls(**json.loads(text))


def heartbeat_key(token: str) -> str:
    return f"{KEY_PREFIX}:{token}"


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def machine_id() -> str:
    """This boot and pid namespace ("" where /proc does not say: then only heartbeats count)."""
    boot = _read("/proc/sys/kernel/random/boot_id")
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
    return f"{boot}/{namespace}" if boot else ""


def process_start(pid: int) -> str:
    """The pid's start time in clock ticks since boot ("" when no such process)."""
    stat = _read(f"/proc/{pid}/stat")
    # The command name (field 2) may hold spaces and parentheses: count fields after the last ')'.
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else ""


def alive_here(holder: Holder) -> bool | None:
    """Whether ``holder`` runs, when it runs on this machine in this pid namespace; None otherwise."""
    if not holder.machine or holder.machine != machine_id():
        return None
    return process_start(holder.pid) == holder.started


_IDENTITY: dict[int, Holder] = {}
_IDENTITY_LOCK = threading.Lock()
NODE_NAME = {"value": socket.gethostname()}  # the Celery node name, set when a worker starts


def this_process() -> Holder:
    """This process's identity, drawn once per process (a forked child draws its own)."""
    pid = os.getpid()
    with _IDENTITY_LOCK:
        if pid not in _IDENTITY:
            _IDENTITY.clear()  # inherited from the parent across fork: not ours
            _IDENTITY[pid] = Holder(secrets.token_hex(8), NODE_NAME["value"], machine_id(), pid, process_start(pid))
        return _IDENTITY[pid]


class Heartbeat:
    """A daemon thread that keeps ``holder``'s heartbeat key alive while the process runs, and calls
    ``on_beat`` after each beat (the process's pending releases are tried again there).

    Trouble (Redis down) is logged and the beat goes on: a process that cannot beat for STALL_AFTER_S
    is presumed dead by the others, which costs at most a duplicated image, never a lost one.
    """

    def __init__(self, client: redis.Redis, holder: Holder, every_s: float, ttl_s: float,
                 on_beat: Callable[[], object] | None = None) -> None:
        self.client, self.holder, self.on_beat = client, holder, on_beat
        self.every_s, self.ttl_ms = every_s, max(int(ttl_s * 1000), 1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self.beat()
        self._thread.start()
        return self

    def beat(self) -> None:
        try:
            self.client.set(heartbeat_key(self.holder.token), self.holder.to_json(), px=self.ttl_ms)
        except redis.RedisError as exc:
            logger.warning("heartbeat of %s not recorded: %s", self.holder.node, exc)

    def stop(self, wait_s: float = 5.0) -> None:
        """A clean exit: the process is gone at once, not after STALL_AFTER_S. A beat in flight is
        waited for (up to ``wait_s``): landing after the delete, it would keep the process alive."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(wait_s)
        with contextlib.suppress(redis.RedisError):
            self.client.delete(heartbeat_key(self.holder.token))

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.beat()
            if self.on_beat is not None:
                try:
                    self.on_beat()
                except Exception:
                    logger.warning("heartbeat of %s: its follow-up failed", self.holder.node, exc_info=True)


def alive(holders: list[Holder], client: redis.Redis) -> dict[str, bool]:
    """Token -> alive, for each holder: by pid where that can be seen from here, else by heartbeat
    (one pipelined round trip for all of those)."""
    verdict: dict[str, bool] = {}
    remote = []
    for holder in holders:
        here = alive_here(holder)
        if here is None:
            remote.append(holder)
        else:
            verdict[holder.token] = here
    if remote:
        with client.pipeline(transaction=False) as pipe:
            for holder in remote:
                pipe.exists(heartbeat_key(holder.token))
            for holder, exists in zip(remote, pipe.execute(), strict=True):
                verdict[holder.token] = bool(exists)
    return verdict
