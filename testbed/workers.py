"""Real ``celery worker`` processes for tests and benchmarks, started the way operators start them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from testbed.servers import RedisServer, S3Server, _Process, free_port

REPO = Path(__file__).resolve().parent.parent  # workers run from the checkout, as `celery -A workers` expects
READY_MARK = "ready."


class CeleryWorker:
    """``celery -A workers worker -Q <queue>`` in its own process group, logging to a file."""

    def __init__(self, queue: str, env: dict[str, str], log_dir: Path, concurrency: int = 1,
                 pool: str | None = None, name: str | None = None) -> None:
        self.queue = queue
        self.name = name or f"{queue}-{uuid.uuid4().hex[:6]}@127.0.0.1"
        self.log = log_dir / f"worker-{self.name.split('@')[0]}.log"
        pool = pool or ("solo" if queue == "gpu" else "prefork")
        argv = [sys.executable, "-m", "celery", "-A", "workers", "worker", "-Q", queue, "-n", self.name,
                f"--pool={pool}", "--loglevel=INFO", "--without-gossip", "--without-mingle"]
        if pool != "solo":
            argv.append(f"--concurrency={concurrency}")
        self._process = _Process(argv, log=self.log, cwd=REPO, env=env)

    @property
    def pid(self) -> int:
        return self._process.pid

    def wait_ready(self, timeout: float = 120) -> CeleryWorker:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._process.alive():
                raise RuntimeError(f"worker {self.name} exited:\n{self.tail()}")
            if READY_MARK in self.log.read_text(errors="replace"):
                return self
            time.sleep(0.2)
        raise TimeoutError(f"worker {self.name} not ready after {timeout}s:\n{self.tail()}")

    def alive(self) -> bool:
        """Whether the worker's main process still runs (a dead pool child does not count)."""
        return self._process.alive()

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL the whole process group: no warm shutdown, no chance to requeue anything."""
        self._process.kill()

    def warm_shutdown(self, timeout: float = 120) -> None:
        """SIGTERM to the main process only, as an orchestrator does: finish the current task, then exit."""
        os.kill(self._process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.popen.wait(timeout)
        self._process.kill()

    def terminate(self) -> None:
        """SIGTERM (warm shutdown) without waiting for it."""
        self._process.terminate()

    def stop(self) -> None:
        self._process.stop(timeout=30)


def stop_workers(workers: list[CeleryWorker]) -> None:
    """Warm-shut-down every worker at once: each one's shutdown takes seconds, and they do not wait on each other."""
    for worker in workers:
        worker.terminate()
    for worker in workers:
        worker.stop()


def cluster_env(base: dict[str, str], redis: RedisServer, db: int, s3: S3Server, bucket: str,
                weights: Path | None = None, **extra: str) -> dict[str, str]:
    """Environment for workers and producer: the password in REDIS_PASSWORD (not the URL), S3 storage;
    WEIGHTS (the checkpoint runs use instead of their preset's model) only when given."""
    env = {k: v for k, v in base.items() if k not in {"BROKER_URL", "STORAGE_URL", "WEIGHTS", "CELERY_BROKER_URL"}}
    env.update(
        BROKER_URL=f"redis://{redis.host}:{redis.port}/{db}", REDIS_PASSWORD=redis.password,
        STORAGE_URL=f"s3://{bucket}", S3_ENDPOINT=s3.endpoint, AWS_ACCESS_KEY_ID=s3.access_key,
        AWS_SECRET_ACCESS_KEY=s3.secret_key, DEVICE="cpu", PYTHONUNBUFFERED="1", **extra,
    )
    if weights is not None:
        env["WEIGHTS"] = str(weights)
    return env


# The task table's columns in docker-compose.yml and infra/k8s/flower.yaml: args shows run and image.
FLOWER_TASK_COLUMNS = "name,uuid,state,args,received,started,runtime,worker"


class FlowerProcess:
    """``celery -A workers flower`` on 127.0.0.1:<port>, with basic auth, logging to a file: started
    the way docker-compose.yml starts it (the broker password in REDIS_PASSWORD, the credentials in
    FLOWER_BASIC_AUTH)."""

    def __init__(self, env: dict[str, str], work_dir: Path, basic_auth: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = work_dir / "flower.log"
        argv = [sys.executable, "-m", "celery", "-A", "workers", "flower", "--address=127.0.0.1",
                f"--port={self.port}", "--persistent=True", f"--db={work_dir / 'flower.db'}",
                f"--tasks-columns={FLOWER_TASK_COLUMNS}"]
        self._process = _Process(argv, log=self.log, cwd=REPO, env={**env, "FLOWER_BASIC_AUTH": basic_auth})

    def alive(self) -> bool:
        return self._process.alive()

    def wait_ready(self, timeout: float = 60) -> FlowerProcess:
        import urllib.request

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1: never a proxy
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._process.alive():
                raise RuntimeError(f"flower exited:\n{self.tail()}")
            with contextlib.suppress(OSError), opener.open(f"{self.url}/healthcheck", timeout=2) as answer:
                if answer.read() == b"OK":
                    return self
            time.sleep(0.3)
        raise TimeoutError(f"Flower not ready after {timeout}s:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        self._process.stop()
