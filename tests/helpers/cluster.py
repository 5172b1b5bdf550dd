"""A small cluster for integration tests: real Redis and S3 (session-wide), real Celery workers.

Each test gets its own Redis database and bucket, so leftover messages of one test never reach
another's workers.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from testbed.servers import RedisServer, S3Server
from testbed.workers import CeleryWorker, cluster_env, stop_workers
from tests.helpers.runs import run_producer
from workers.io.storage import Storage, StorageFactory
from workers.settings import Settings

__all__ = [
    "RECOVERY_STALL_S",
    "RECOVERY_SWEEP_S",
    "SIMULATED",
    "Cluster",
    "cluster",
    "recovering",
    "run_id_from",
    "wait_until",
]

SIMULATED = str(Path(__file__).resolve().parents[1] / "simulated")  # sitecustomize.py: faults injected into workers
# The fault tests' recovery clock: the sweep runs every RECOVERY_SWEEP_S; a worker silent for
# RECOVERY_STALL_S is presumed dead, and a run idle that long is searched for lost messages.
RECOVERY_STALL_S, RECOVERY_SWEEP_S = 8, 2

_DATABASES = itertools.cycle(range(1, 16))


def run_id_from(stdout: str) -> str:
    """The run id from ``producer enqueue``'s ``run <id>: N inputs, ...`` line (after the preset line)."""
    match = re.search(r"^run (\S+): \d+ inputs", stdout, re.MULTILINE)
    assert match, f"no run line in: {stdout[:500]}"
    return match.group(1)


def wait_until(condition, timeout: float, what: str, poll: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class Cluster:
    env: dict[str, str]
    redis: RedisServer
    db: int
    s3: S3Server
    bucket: str
    logs: Path
    weights: Path | None = None  # a Real-ESRGAN checkpoint for the presets that run one (no Hub here)
    workers: list[CeleryWorker] = field(default_factory=list)

    def start(self, queue: str, concurrency: int = 1, **extra_env: str) -> CeleryWorker:
        return self.launch(queue, concurrency, **extra_env).wait_ready()

    def launch(self, queue: str, concurrency: int = 1, **extra_env: str) -> CeleryWorker:
        """A worker, started but not waited for (one that may die as soon as it consumes)."""
        worker = CeleryWorker(queue, {**self.env, **extra_env}, self.logs, concurrency=concurrency)
        self.workers.append(worker)
        return worker

    def start_default(self) -> Cluster:
        """One CPU worker (2 processes) and one GPU-queue worker (solo, on the CPU here)."""
        self.start("cpu", concurrency=2)
        self.start("gpu")
        return self

    def producer(self, *args: str, cwd: Path, **extra_env: str):  # CompletedProcess
        return run_producer(*args, env={**self.env, **extra_env}, cwd=cwd)

    def redis_client(self):  # redis.Redis
        return self.redis.client(db=self.db)

    def store(self) -> Storage:
        """The cluster's run store (its bucket), as workers see it."""
        return StorageFactory(Settings.from_env(self.env)).open(self.env["STORAGE_URL"])

    def embedded_submission(self, src: str, tmp_path: Path, *args: str) -> str:
        """The submission of the same inputs through the embedded default (no broker, local store):
        the fault-free reference."""
        local = {k: v for k, v in self.env.items() if k not in {"BROKER_URL", "STORAGE_URL"}}
        local["STORAGE_URL"] = str(tmp_path / "embedded")
        result = run_producer("enqueue", src, *args, env=local, cwd=tmp_path)
        assert result.returncode in (0, 1), result.stderr
        run_id = run_id_from(result.stdout)
        return (tmp_path / "embedded" / "runs" / run_id / "submission.csv").read_text()

    def stop(self) -> None:
        stop_workers(self.workers)


@pytest.fixture
def cluster(
    redis_server: RedisServer, s3_server: S3Server, s3_bucket: str, weights_path: Path, tmp_path: Path
) -> Iterator[Cluster]:
    """Servers and environment, no workers yet: call ``start_default()`` or ``start(queue)``."""
    db = next(_DATABASES)
    redis_server.client(db=db).flushdb()
    env = cluster_env(
        dict(os.environ),
        redis_server,
        db,
        s3_server,
        s3_bucket,
        VISIBILITY_TIMEOUT_S="10",
        TRAIN_CHUNK_S="5",
        GPU_BATCH_SIZE="4",
        MAX_IMAGE_PIXELS="100000",
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    cluster = Cluster(env, redis_server, db, s3_server, s3_bucket, logs, weights_path)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def recovering(cluster: Cluster) -> Cluster:
    """The cluster with a short recovery clock and the small compact model (when available) on GPU workers."""
    from tests.helpers.paths import weights_file

    compact = weights_file("realesr-animevideov3.pth")
    cluster.env["WEIGHTS"] = str(compact if compact.is_file() else cluster.weights)
    cluster.env.update(STALL_AFTER_S=str(RECOVERY_STALL_S), SWEEP_INTERVAL_S=str(RECOVERY_SWEEP_S))
    # NL-means and the compact model: both stages run, so deaths and bugs can hit either (the
    # default, learned, has no CPU stage)
    cluster.env["PRESET"] = "standard"
    return cluster
