"""Fault suite: the distributed system against restarts, outages, kills, overlap and cancellation.

Every scenario runs against the real servers and real workers and ends the same way: the run's
submission.csv has every expected row exactly once and is byte-identical to a fault-free run.
Run it alone with ``make faults`` (``pytest -m faults``). The GPU-queue workers use the small
SRVGGNet model (realesr-animevideov3) when it is available, to keep CPU time low.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers.cluster import Cluster, run_id_from, wait_until
from tests.helpers.images import write_images
from tests.helpers.paths import REPO, weights_file
from tests.helpers.scenarios import assert_complete_and_identical, count, start_run
from workers.run.keys import RunKeys

pytestmark = [pytest.mark.integration, pytest.mark.faults]

IMAGES = 12


@pytest.fixture
def faults(cluster: Cluster) -> Cluster:
    compact = weights_file("realesr-animevideov3.pth")
    cluster.env["WEIGHTS"] = str(compact if compact.is_file() else cluster.weights)
    # Sweeps (the workers' and a waiting producer's) every few seconds: a run Redis forgot is rebuilt
    # soon. STALL_AFTER_S stays long: nothing here waits for a stall.
    cluster.env["SWEEP_INTERVAL_S"] = "3"
    # NL-means and the compact model: both stages run, so the faults hit CPU and GPU workers alike
    # (the default, learned, has no CPU stage).
    cluster.env["PRESET"] = "standard"
    return cluster






@contextlib.contextmanager
def follow(cluster: Cluster, folder: Path, tmp_path: Path, *args: str) -> Iterator[subprocess.Popen[str]]:
    """``producer enqueue`` in the background: it resumes the run and (unless ``--no-wait``) follows
    it to the end. Killed on the way out, so a test that failed never leaves it enqueueing into a database that a
    later test reuses."""
    waiter = subprocess.Popen([sys.executable, "-m", "producer", "enqueue", str(folder), *args], env=cluster.env,
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield waiter
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.communicate()


def read_until(waiter: subprocess.Popen[str], marker: str) -> str:
    """The waiter's stdout up to the first line containing ``marker``."""
    seen = []
    for line in waiter.stdout:  # type: ignore[union-attr]
        seen.append(line)
        if marker in line:
            return "".join(seen)
    raise AssertionError(f"the producer exited before printing {marker!r}: {''.join(seen)}{waiter.stderr.read()}")




def restart_mid_run(faults: Cluster, tmp_path: Path, restart: Callable[[], None]) -> None:
    """A run followed by a waiting producer; ``restart`` once the first rows exist and the producer
    is following the run. The waiting producer must see it through to a complete, identical
    submission. (A producer that starts while Redis is down: test_producer_rides_out_redis_starting_late.)"""
    folder = tmp_path / "in"
    write_images(folder, IMAGES, width=96, height=64)
    faults.start_default()
    run_id = start_run(faults, folder, tmp_path)
    with follow(faults, folder, tmp_path) as waiter:
        head = read_until(waiter, "enqueued run")
        wait_until(lambda: count(faults, run_id, "rows") >= 2, 120, "first rows")
        restart()
        out, err = waiter.communicate(timeout=300)
        assert waiter.returncode == 0, head + out + err
    assert_complete_and_identical(faults, run_id, folder, tmp_path)


def test_redis_restart_mid_run(faults, tmp_path):
    restart_mid_run(faults, tmp_path, faults.redis.restart)  # append-only file on, as in docker-compose.yml


def test_redis_restart_without_persistence_is_resumed_by_the_waiting_producer(faults, tmp_path):
    """Without the append-only file Redis comes back empty: queued tasks and the completion set are
    gone. The producer that waits on the run notices and enqueues what storage says is left."""
    from testbed.servers import RedisServer

    volatile = RedisServer(tmp_path / "volatile-redis", appendonly=False)
    try:
        faults.env.update(BROKER_URL=f"redis://{volatile.host}:{volatile.port}/0", REDIS_PASSWORD=volatile.password)

        def restart_empty() -> None:
            volatile.stop()
            assert not any(volatile.data_dir.iterdir())  # nothing persisted: it comes back empty
            volatile.start()

        restart_mid_run(faults, tmp_path, restart_empty)
    finally:
        faults.stop()
        volatile.stop()


def test_producer_rides_out_redis_starting_late(faults, tmp_path):
    """A producer that reaches the broker while Redis is down (restarting, its pod rescheduled)
    waits for it instead of failing: Redis comes up 3 s later and every task is enqueued."""
    from testbed.servers import RedisServer

    folder = tmp_path / "in"
    write_images(folder, 3)
    late = RedisServer(tmp_path / "late-redis")
    late.stop()
    try:
        faults.env.update(BROKER_URL=f"redis://{late.host}:{late.port}/0", REDIS_PASSWORD=late.password)
        with follow(faults, folder, tmp_path, "--no-wait") as producer:
            head = read_until(producer, "3 inputs")  # planned; next it connects to Redis
            time.sleep(3)
            assert producer.poll() is None, "the producer gave up while Redis was down"
            late.start()
            out, err = producer.communicate(timeout=120)
            assert producer.returncode == 0, head + out + err
        assert late.client().llen("cpu") == 3
    finally:
        late.stop()


def test_a_lost_completion_reply_is_mended_by_the_waiting_producer(faults, tmp_path, monkeypatch):
    """The reply that tells the last worker it completed the run can be lost to a dropped
    connection; its retry cannot tell, so no aggregation is enqueued. Redis then counts every image
    finished with no summary: the waiting producer's sweep of its run (the workers' stall detector)
    enqueues the aggregation itself."""
    from producer import dispatch
    from producer.planning import plan_remaining
    from workers.run.manifest import load_manifest
    from workers.runtime import sweep
    from workers.settings import Settings

    folder = tmp_path / "in"
    write_images(folder, 3)
    faults.start("cpu")
    faults.start("gpu")
    first = faults.producer("enqueue", str(folder), cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    run_id = run_id_from(first.stdout)
    store, keys = faults.store(), RunKeys(run_id)
    store.delete(keys.summary)
    settings = Settings.from_env(faults.env, sweep_interval_s=1.0)
    tracker = dispatch.connect_tracker(settings)
    plan = plan_remaining(store, load_manifest(store, run_id))
    tracker.start(run_id, 3)
    assert tracker.finish_many(run_id, plan.finished)  # the run completes; this reply is "lost"
    monkeypatch.setattr(sweep, "aggregation_grace_s", lambda total, stall_after_s: 1.0)
    result = dispatch.wait_for_run(settings, store, plan, tracker)
    assert (result.written, result.pending) == (3, 0)
    assert_complete_and_identical(faults, run_id, folder, tmp_path)


def test_s3_outage_of_20s_mid_run(faults, tmp_path):
    folder = tmp_path / "in"
    write_images(folder, IMAGES, width=96, height=64)
    faults.start_default()
    run_id = start_run(faults, folder, tmp_path)
    wait_until(lambda: count(faults, run_id, "denoised") >= 2, 120, "first denoised images")
    faults.s3.stop()
    time.sleep(20)
    faults.s3.start()
    result = faults.producer("enqueue", str(folder), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr  # nothing marked failed for an outage
    assert_complete_and_identical(faults, run_id, folder, tmp_path)


def test_workers_killed_and_terminated_mid_task(faults, tmp_path):
    folder = tmp_path / "in"
    write_images(folder, IMAGES, width=128, height=96)
    cpu_a = faults.start("cpu", concurrency=1)
    faults.start("cpu", concurrency=1)
    gpu_a = faults.start("gpu")
    run_id = start_run(faults, folder, tmp_path)
    wait_until(lambda: count(faults, run_id, "denoised") >= 1, 120, "denoising to start")
    cpu_a.kill()
    wait_until(lambda: count(faults, run_id, "rows") >= 1, 120, "upscaling to start")
    gpu_a.kill()
    gpu_b = faults.start("gpu")
    rows = count(faults, run_id, "rows")
    # Up to a visibility timeout plus kombu's restore sweep passes before the killed worker's messages return.
    wait_until(lambda: count(faults, run_id, "rows") > min(rows, IMAGES - 1), 240, "the new GPU worker to make progress")
    gpu_b.warm_shutdown()  # SIGTERM mid-batch: finish the batch, hand the rest back
    faults.start("gpu")
    result = faults.producer("enqueue", str(folder), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_complete_and_identical(faults, run_id, folder, tmp_path)


def test_two_runs_on_overlapping_inputs_never_mix(faults, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    write_images(first, 6)
    write_images(second, 9)  # images 1-6 are byte-identical to the first folder's
    faults.start_default()
    run_ids = []
    with follow(faults, first, tmp_path) as one, follow(faults, second, tmp_path, "--nlm-h", "5") as other:
        for waiter in (one, other):
            out, err = waiter.communicate(timeout=300)
            assert waiter.returncode == 0, out + err
            run_ids.append(run_id_from(out))
    assert run_ids[0] != run_ids[1]
    assert_complete_and_identical(faults, run_ids[0], first, tmp_path)
    assert_complete_and_identical(faults, run_ids[1], second, tmp_path, "--nlm-h", "5")


def test_cancel_drops_queued_work_and_resume_finishes(faults, tmp_path):
    folder = tmp_path / "in"
    write_images(folder, 12)
    run_id = start_run(faults, folder, tmp_path)  # no worker yet: every task is still queued
    redis = faults.redis_client()
    assert redis.llen("cpu") == 12
    cancelled = faults.producer("cancel", run_id, cwd=tmp_path)
    assert cancelled.returncode == 0, cancelled.stderr
    worker = faults.start("cpu", concurrency=1)
    faults.start("gpu")
    wait_until(lambda: redis.llen("cpu") == 0 and not redis.hlen("unacked"), 120, "queued tasks to be dropped")
    assert count(faults, run_id, "denoised") == 0 and count(faults, run_id, "rows") == 0
    ping = subprocess.run([sys.executable, "-m", "celery", "-A", "workers", "inspect", "ping", "-t", "10", "-d", worker.name],
                          env=faults.env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "pong" in ping.stdout  # the worker is healthy
    refused = faults.producer("enqueue", str(folder), cwd=tmp_path)  # a cancel is resumed only when asked to
    assert refused.returncode == 2 and "was cancelled" in refused.stderr, refused.stdout + refused.stderr
    result = faults.producer("enqueue", str(folder), "--resume-cancelled", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_complete_and_identical(faults, run_id, folder, tmp_path)
