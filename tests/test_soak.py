"""Soak: thousands of tiny images through 2 CPU workers and 1 GPU-queue worker.

Not part of ``make test`` (it takes minutes); run it with ``make soak``. It prints the throughput and
the memory figures it checks: worker RSS after the run against RSS after the first 100 images, and
Redis memory against its baseline before the run.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.helpers.cluster import run_id_from, wait_until
from tests.helpers.images import noisy_image, png_bytes
from workers.run.keys import RunKeys

pytestmark = [pytest.mark.integration, pytest.mark.soak]

IMAGES = int(os.environ.get("SOAK_IMAGES", "2000"))
RSS_SLACK_MB = 64


def rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MiB (from /proc)."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except FileNotFoundError:
            continue
        total += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
        pending += [int(c) for c in children]
    return total / 1024


def test_soak(cluster, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(IMAGES):
        (folder / f"test_{i:05d}.png").write_bytes(png_bytes(noisy_image(8, 8, seed=i)))
    workers = [cluster.start("cpu", concurrency=1), cluster.start("cpu", concurrency=1),
               cluster.start("gpu", GPU_BATCH_SIZE="16")]
    redis = cluster.redis_client()
    baseline = redis.info("memory")["used_memory"]
    started = time.monotonic()
    result = cluster.producer("enqueue", str(folder), "--no-wait", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_id = run_id_from(result.stdout)
    store, keys = cluster.store(), RunKeys(run_id)
    wait_until(lambda: len(list(store.list(keys.prefix("rows")))) >= 100, 600, "the first 100 images", poll=1)
    early = [rss_mb(w.pid) for w in workers]
    wait_until(lambda: store.exists(keys.report), 3600, "the run and its report to finish", poll=2)
    elapsed = time.monotonic() - started
    late = [rss_mb(w.pid) for w in workers]
    time.sleep(2)
    memory = redis.info("memory")
    after = memory["used_memory"]
    redis_keys = sorted(k.decode() for k in redis.keys("*"))

    rows = store.get(keys.submission).decode().splitlines()[1:]
    assert len(rows) == len({r.split(",", 1)[0] for r in rows}) == IMAGES
    print(f"\nsoak: {IMAGES} images in {elapsed:.1f}s = {IMAGES / elapsed:.1f} img/s (2 CPU + 1 GPU-queue worker)")
    for worker, before_mb, after_mb in zip(workers, early, late, strict=True):
        print(f"  {worker.name}: RSS {before_mb:.0f} MiB after 100 images, {after_mb:.0f} MiB at the end")
        assert after_mb <= before_mb * 1.25 + RSS_SLACK_MB
    batches = [json.loads(store.get(key))["batch"] for key in store.list(keys.prefix("meta"))
                if key.endswith(".upscale.json")]
    print(f"  GPU batch fill: {sum(batches) / len(batches):.1f} images per forward on average (GPU_BATCH_SIZE 16; "
          f"{sum(b == 16 for b in batches) / len(batches):.0%} of images in full batches)")
    print(f"  redis used_memory: {baseline / 1e6:.2f} MB before, {after / 1e6:.2f} MB after "
          f"(clients {memory['mem_clients_normal'] / 1e6:.2f} MB, scripts {memory['used_memory_scripts'] / 1e3:.1f} kB, "
          f"{len(redis_keys)} keys: {', '.join(redis_keys[:8])})")
    assert after <= baseline + 1_000_000
