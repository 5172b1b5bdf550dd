"""What liveness costs a healthy run, and what it does to a backlog, on real servers.

(1) ``healthy``: a distributed run of ``--images`` images (one CPU worker with two processes, one
GPU-queue worker, real redis-server and SeaweedFS S3 from ``testbed/``) after a warm-up run. It
counts every Redis command the run causes (``INFO commandstats``, reset before the run: the
server's own count and time per command) and every S3 request (``testbed/proxy.py`` between the
workers and S3 counts them), per image. The producer enqueues with ``--no-wait`` and the script watches S3
directly, so the counts are the workers' and one enqueue's. Sweeps and heartbeats run on timers,
not per image: SWEEP_INTERVAL_S is set long so they stay out of the count.

(2) ``backlog``: ``--runs`` runs of ``--backlog-images`` images wait at the GPU queue (no GPU
worker) while a CPU worker's sweep runs every second with STALL_AFTER_S ``--stall``; after each
stall period it prints how many messages the GPU queue holds per unfinished image.

It drives the code under test only through the CLI, ``testbed/`` and Redis, so it measures an export
of another commit the same way: copy ``benchmarks/`` and ``testbed/proxy.py`` into the export and run it
there (docs/benchmarks.md's comparisons of two commits are measured so).

    python -m benchmarks.liveness --images 40 --runs 3 --backlog-images 5 --periods 3
"""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from benchmarks import harness, machine, workload
from benchmarks.harness import Servers, fmt, log, markdown_table


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = harness.parser(__file__, __doc__)
    parser.add_argument("--part", default="healthy,backlog", help="healthy, backlog or both (comma separated)")
    parser.add_argument("--images", type=int, default=40, help="images of the healthy run")
    parser.add_argument("--size", type=harness.parse_size, default=(32, 24), help="input size WxH (default 32x24)")
    parser.add_argument("--runs", type=int, default=3, help="runs waiting in the backlog")
    parser.add_argument("--backlog-images", type=int, default=5, help="images per backlog run")
    parser.add_argument("--stall", type=float, default=3.0, help="STALL_AFTER_S of the backlog part")
    parser.add_argument("--periods", type=int, default=3, help="stall periods to watch the backlog for")
    parser.add_argument("--weights", type=Path, default=None, help="GPU worker checkpoint (default: the compact "
                        "realesr-animevideov3 in ../shared/weights when present)")
    return parser.parse_args(argv)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def enqueue(env: dict[str, str], folder: Path, cwd: Path) -> str:
    """``producer enqueue FOLDER --no-wait``; the run id."""
    result = subprocess.run([sys.executable, "-m", "producer", "enqueue", str(folder), "--no-wait"], env=env, cwd=cwd,
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(result.stdout + result.stderr)
    line = next(line for line in result.stdout.splitlines() if line.startswith("run ") and " inputs" in line)
    return line.split()[1].rstrip(":")


def summary_exists(s3_client, bucket: str, run_id: str) -> bool:  # minio.Minio
    return any(True for _ in s3_client.list_objects(bucket, prefix=f"runs/{run_id}/summary.json"))


def healthy(servers: Servers, tmp: Path, count: int, size: tuple[int, int]) -> None:
    from testbed.proxy import TcpProxy

    client, direct, bucket = servers.redis.client(), servers.s3.client(), servers.bucket
    with TcpProxy(servers.s3.endpoint) as proxy:
        env = {**servers.env, "S3_ENDPOINT": proxy.endpoint, "SWEEP_INTERVAL_S": "600", "STALL_AFTER_S": "3600"}
        with harness.celery_workers(env, tmp / "logs-healthy", cpu_processes=2):
            workload.write_inputs(tmp / "warm", workload.synthetic_images(1, *size, seed=99))
            warm = enqueue(env, tmp / "warm", tmp)
            wait_for(lambda: summary_exists(direct, bucket, warm), 300, "the warm-up run")
            workload.write_inputs(tmp / "healthy", workload.synthetic_images(count, *size))
            time.sleep(1)
            client.config_resetstat()
            proxy.requests = 0
            started = time.perf_counter()
            run_id = enqueue(env, tmp / "healthy", tmp)
            wait_for(lambda: summary_exists(direct, bucket, run_id), 600, f"run {run_id}")
            seconds = time.perf_counter() - started
            stats = client.info("commandstats")
            s3_requests = proxy.requests
    commands = {name.removeprefix("cmdstat_"): value for name, value in stats.items()}
    calls = sum(v["calls"] for v in commands.values())
    usec = sum(v["usec"] for v in commands.values())
    print(f"\n### Healthy run: {count} images of {size[0]}x{size[1]}, {seconds:.1f} s\n")
    print(markdown_table(["per image", "value"], [
        ["Redis commands", fmt(calls / count)],
        ["Redis server time (ms)", fmt(usec / count / 1000)],
        ["S3 requests", fmt(s3_requests / count)],
    ]))
    top = sorted(commands.items(), key=lambda item: -item[1]["calls"])[:12]
    print("\n" + markdown_table(["Redis command", "calls per image", "usec per call"],
                                [[name, fmt(v["calls"] / count), fmt(v["usec_per_call"])] for name, v in top]))


def gpu_queue(client) -> Counter:  # redis.Redis
    """(run, name) -> messages waiting at the GPU queue."""
    bodies = (json.loads(raw)["body"] for raw in client.lrange("gpu", 0, -1))
    return Counter(tuple(json.loads(base64.b64decode(body))[0]) for body in bodies)


def backlog(servers: Servers, tmp: Path, runs: int, images: int, stall: float, periods: int,
            size: tuple[int, int]) -> None:
    env = {**servers.env, "STALL_AFTER_S": str(stall), "SWEEP_INTERVAL_S": "1"}
    client = servers.redis.client()
    client.flushdb()
    for k in range(runs):
        workload.write_inputs(tmp / f"backlog{k}", workload.synthetic_images(images, *size, seed=k))
        enqueue(env, tmp / f"backlog{k}", tmp)
    with harness.celery_workers(env, tmp / "logs-backlog", cpu_processes=1, gpu=False):
        expected = runs * images
        wait_for(lambda: client.llen("cpu") == 0 and not client.hlen("unacked") and client.llen("gpu") >= expected, 300,
                 "every image to wait at the GPU queue")
        rows = []
        for period in range(periods + 1):
            queued = gpu_queue(client)
            rows.append([f"{period} x STALL_AFTER_S", expected, sum(queued.values()), max(queued.values())])
            if period < periods:
                time.sleep(stall + 1.5)  # one stall, and the sweep after it
    print(f"\n### Backlog: {runs} runs of {images} images at the GPU queue, no GPU worker, STALL_AFTER_S={stall:g}\n")
    print(markdown_table(["after", "unfinished images", "messages at the GPU queue", "most for one image"], rows))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    parts = set(args.part.split(","))
    size = args.size
    weights = args.weights or harness.default_weights().with_name("realesr-animevideov3.pth")
    if not weights.is_file():
        weights = harness.default_weights()
    load = machine.load_average()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        with harness.servers(tmp, weights.resolve(), appendonly=True, GPU_BATCH_SIZE="8") as servers:
            if "healthy" in parts:
                log(f"healthy: {args.images} images")
                healthy(servers, tmp, args.images, size)
            if "backlog" in parts:
                log(f"backlog: {args.runs} runs x {args.backlog_images} images, {args.periods} stall periods")
                backlog(servers, tmp, args.runs, args.backlog_images, args.stall, args.periods, size)
    print(f"\n{machine.cpu_model()}, {machine.core_count()} cores; load average {load} at the start")
    return 0


if __name__ == "__main__":
    sys.exit(main())
