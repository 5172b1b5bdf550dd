"""A memory limit the kernel enforces, as on a container: a cgroup v1 memory group.

A process moved into the group (its pid written to ``cgroup.procs``; its later children stay in
it) is OOM-killed by the kernel when the memory charged to the group goes over the limit, exactly
as a pod over its ``resources.limits.memory`` is. Only memory charged after the move counts (the
kernel does not move earlier charges unless ``memory.move_charge_at_immigrate`` says so), so the
limit is the headroom a worker gets beyond what it held when it was moved.

Needs root and the v1 memory controller (``/sys/fs/cgroup/memory``); :func:`unavailable` says why
not otherwise. The group is made inside the caller's own memory group, and :meth:`MemoryLimit.close`
moves what is left back there and removes the group, also after a failure.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

CONTROLLER = Path("/sys/fs/cgroup/memory")


def own_group() -> Path:
    """The memory group this process is in (the controller's root when it cannot tell)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if "memory" in controllers.split(","):
                return CONTROLLER / path.lstrip("/")
    return CONTROLLER


def unavailable() -> str | None:
    """Why a memory limit cannot be made here, or None."""
    if not (CONTROLLER / "cgroup.procs").is_file():
        return f"no cgroup v1 memory controller at {CONTROLLER}"
    if os.geteuid() != 0:
        return "memory groups need root"
    probe = own_group() / f"lowlight-probe-{uuid.uuid4().hex[:8]}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        return f"cannot make a memory group under {probe.parent}: {exc}"
    return None


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (a Celery worker and its pool children)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo += [int(child) for child in task.read_text().split()]
    return found


class MemoryLimit:
    """A memory group with a limit of ``limit_bytes`` beyond what its processes held when they joined."""

    def __init__(self, limit_bytes: int) -> None:
        self.parent = own_group()
        self.path = self.parent / f"lowlight-test-{uuid.uuid4().hex[:8]}"
        self.path.mkdir()
        try:
            self._write("memory.limit_in_bytes", limit_bytes)
            with contextlib.suppress(OSError):  # only with swap accounting; no swap means no escape anyway
                self._write("memory.memsw.limit_in_bytes", limit_bytes)
            with contextlib.suppress(OSError):
                self._write("memory.swappiness", 0)
        except BaseException:
            self.close()
            raise

    def _write(self, name: str, value: int) -> None:
        (self.path / name).write_text(str(value))

    def add(self, pid: int) -> None:
        """Move ``pid`` and all its descendants into the group."""
        for process in descendants(pid):
            with contextlib.suppress(ProcessLookupError, OSError):
                (self.path / "cgroup.procs").write_text(str(process))

    def oom_kills(self) -> int:
        """How many processes the kernel has OOM-killed in this group (``oom_kill``, Linux 4.13 and later)."""
        for line in (self.path / "memory.oom_control").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        raise RuntimeError(f"this kernel's {self.path}/memory.oom_control does not count OOM kills")

    def close(self) -> None:
        """Move what still runs in the group back to the parent group, and remove the group."""
        if not self.path.exists():
            return
        with contextlib.suppress(OSError):
            for pid in (self.path / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):
                    (self.parent / "cgroup.procs").write_text(pid)
        with contextlib.suppress(OSError):
            self.path.rmdir()

    def __enter__(self) -> MemoryLimit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
