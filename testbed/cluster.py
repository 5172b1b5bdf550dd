"""``make cluster``: the distributed system on this machine, no Docker needed.

Starts, on 127.0.0.1 and on free ports, with fresh random credentials: ``redis-server`` (the broker,
append-only file), SeaweedFS ``weed mini`` (the S3 server, bucket ``lowlight-sr``), one CPU worker,
one GPU-queue worker (on the CPU here) and Flower; writes the environment a producer needs to
``cluster.env`` (mode 600) and prints how to use it. Ctrl-C (or SIGTERM) stops every process, workers
first with a warm shutdown; everything lived in a temporary folder, which goes too (``--keep`` leaves
it, with the logs).

    python -m testbed.cluster [--cpu-concurrency N] [--env-file PATH] [--keep]
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path

from testbed.servers import RedisServer, S3Server
from testbed.workers import CeleryWorker, FlowerProcess, stop_workers

BUCKET = "lowlight-sr"
# What the producer needs (the rest of the workers' environment is theirs: logs, device).
PRODUCER_VARIABLES = (
    "BROKER_URL",
    "REDIS_PASSWORD",
    "STORAGE_URL",
    "S3_ENDPOINT",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
)


def cluster_environment(redis: RedisServer, s3: S3Server) -> dict[str, str]:
    """The settings every process of the cluster shares (workers.settings names)."""
    return {
        "BROKER_URL": f"redis://{redis.host}:{redis.port}/0",
        "REDIS_PASSWORD": redis.password,
        "STORAGE_URL": f"s3://{BUCKET}",
        "S3_ENDPOINT": s3.endpoint,
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
    }


def write_env_file(path: Path, values: dict[str, str]) -> None:
    path.touch(mode=0o600)
    path.chmod(0o600)  # it holds the cluster's passwords
    path.write_text("".join(f"{key}={values[key]}\n" for key in PRODUCER_VARIABLES))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-concurrency", type=int, default=1, help="CPU worker processes (default: 1)")
    parser.add_argument(
        "--env-file",
        type=Path,
        default=Path("cluster.env"),
        help="where to write the producer's environment (default: ./cluster.env)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the data and logs folder when stopping")
    args = parser.parse_args(argv)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    work = Path(tempfile.mkdtemp(prefix="lowlight-cluster-"))
    logs = work / "logs"
    logs.mkdir()
    redis = s3 = flower = None
    workers: list[CeleryWorker] = []
    try:
        redis = RedisServer(work / "redis", appendonly=True)
        s3 = S3Server(work / "s3")
        s3.make_bucket(BUCKET)
        shared = cluster_environment(redis, s3)
        inherited = {k: v for k, v in os.environ.items() if k not in {"BROKER_URL", "CELERY_BROKER_URL", "STORAGE_URL"}}
        env = {**inherited, **shared, "PYTHONUNBUFFERED": "1"}
        workers = [CeleryWorker("cpu", env, logs, concurrency=args.cpu_concurrency), CeleryWorker("gpu", env, logs)]
        flower_auth = f"ops:{secrets.token_urlsafe(12)}"
        flower = FlowerProcess(env, work, flower_auth)
        for worker in workers:
            worker.wait_ready()
        flower.wait_ready()
        write_env_file(args.env_file, shared)
        print(
            f"""cluster ready (data and logs in {work}):
  Redis      {redis.host}:{redis.port}
  S3         http://{s3.endpoint}  bucket {BUCKET}
  Flower     {flower.url}  (user:password {flower_auth})
  workers    {", ".join(w.name for w in workers)}
In another shell:
  set -a; . {args.env_file}; set +a
  producer enqueue dataset/
Ctrl-C here stops everything.""",
            flush=True,
        )
        while not stop.wait(1):
            dead = [w.name for w in workers if not w.alive()] + ([] if flower.alive() else ["flower"])
            if dead:
                print(f"stopped by itself: {', '.join(dead)} (logs in {logs}); stopping the cluster", file=sys.stderr)
                return 1
        return 0
    finally:
        print("stopping the cluster...", flush=True)
        stop_workers(workers)
        for process in (flower, s3, redis):
            if process is not None:
                process.stop()
        args.env_file.unlink(missing_ok=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        print("stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
