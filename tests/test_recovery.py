"""Nothing stranded: every image ends done or failed and every run aggregates, with nobody watching.

Real redis-server, weed mini and Celery workers; every run here is enqueued with ``--no-wait``, so
no producer mends anything: the workers' retries and the recovery sweep must. Faults that cannot
happen for real here (a GPU out of memory, one object that never becomes readable, a message lost
between a worker and the broker) are simulated inside the real worker processes by
``tests/simulated/sitecustomize.py``, and the tests say so in their names.
"""

from __future__ import annotations

import base64
import json
import time
from collections import Counter

import numpy as np
import pytest

from tests.helpers.cluster import RECOVERY_STALL_S, RECOVERY_SWEEP_S, wait_until
from tests.helpers.images import png_bytes, write_images
from tests.helpers.scenarios import (
    assert_complete_and_identical,
    count,
    failures_of,
    start_run,
    summary_of,
    wait_for_summary,
    with_faults,
)
from tests.simulated.sitecustomize import PAUSE_MARK, STALL_MARK
from workers.run.attempts import read_attempts
from workers.run.keys import RunKeys

pytestmark = [pytest.mark.integration, pytest.mark.faults]

STALL_S, SWEEP_S = RECOVERY_STALL_S, RECOVERY_SWEEP_S










def test_gpu_worker_killed_mid_batch_completes_within_two_sweeps_not_a_visibility_timeout(recovering, tmp_path):
    """An operator SIGKILLs a GPU worker mid-batch, with the default VISIBILITY_TIMEOUT_S (3600 s): its
    messages sit in Redis's unacked hash; the sweep sees its holder gone and hands them back to the
    queue at once. One death is charged to the images it was computing, and fails none of them."""
    recovering.env["VISIBILITY_TIMEOUT_S"] = "3600"
    folder = tmp_path / "in"
    write_images(folder, 8, width=96, height=64)
    recovering.start("cpu", concurrency=2)
    gpu = recovering.start("gpu", **with_faults("stall-forward:1"))  # one pass, then the next hangs until the kill
    run_id = start_run(recovering, folder, tmp_path)
    redis = recovering.redis_client()
    wait_until(lambda: STALL_MARK in gpu.log.read_text(errors="replace") and count(recovering, run_id, "rows") >= 1
               and redis.hlen("unacked") >= 1, 120, "the GPU worker to hold messages mid-run")
    gpu.kill()
    killed = time.monotonic()
    assert count(recovering, run_id, "rows") < 8
    recovering.start("gpu")
    summary = wait_for_summary(recovering, run_id, 240)
    took = time.monotonic() - killed
    print(f"\nGPU worker SIGKILLed mid-batch: run complete {took:.1f} s after the kill "
          f"(STALL_AFTER_S={STALL_S}, sweep every {SWEEP_S} s, VISIBILITY_TIMEOUT_S=3600)")
    assert summary["written"] == 8 and took < STALL_S + 2 * SWEEP_S + 90, f"{took:.0f} s after the kill"
    assert_complete_and_identical(recovering, run_id, folder, tmp_path)  # an operator's kill fails nothing
    store = recovering.store()
    assert max(read_attempts(store, run_id, path.name, "upscale").deaths for path in folder.iterdir()) <= 1


def test_a_gpu_worker_holding_part_of_a_batch_flushes_it_after_a_broker_reconnect(recovering, tmp_path):
    """Celery clears the event loop's timers when the broker connection drops; celery-batches kept
    the handle of its flush timer, so after a reconnect a GPU worker holding fewer than
    GPU_BATCH_SIZE messages never ran them (the 60 s outage test hung this way about one time in
    three). Here one message sits in the buffer, waiting for GPU_BATCH_WAIT_S, when Redis restarts;
    STALL_AFTER_S is long, so the sweep cannot be what finishes the run."""
    recovering.env.update(STALL_AFTER_S="900", GPU_BATCH_WAIT_S="8")
    folder = tmp_path / "in"
    write_images(folder, 1)
    recovering.start("cpu")
    recovering.start("gpu")
    redis = recovering.redis_client()
    run_id = start_run(recovering, folder, tmp_path, "--denoise-on", "gpu")
    wait_until(lambda: redis.llen("gpu") == 0 and redis.hlen("unacked") == 1, 30,
               "the GPU worker to buffer the message")
    recovering.redis.restart()  # append-only file on: the unacknowledged message survives
    summary = wait_for_summary(recovering, run_id, 90)
    assert summary["written"] == 1
    assert_complete_and_identical(recovering, run_id, folder, tmp_path)


def test_an_image_that_always_fails_transiently_ends_failed_simulated_storage_outage(recovering, tmp_path):
    """One object the store never serves (simulated): after TASK_MAX_RETRIES it is failed with the
    reason, the others are done, the run aggregates, and --retry-failed re-runs only it."""
    folder = tmp_path / "in"
    names = write_images(folder, 4)
    bad = names[1]
    faulty = {**with_faults(f"storage-down:{bad}"), "TASK_MAX_RETRIES": "2"}
    recovering.start("cpu", concurrency=2, **faulty)
    recovering.start("gpu")
    run_id = start_run(recovering, folder, tmp_path)
    summary = wait_for_summary(recovering, run_id, 120)
    assert (summary["written"], summary["failed"], summary["pending"]) == (3, 1, 0)
    assert failures_of(recovering, run_id) == {bad: "gave up after 3 transient errors: simulated: S3 unreachable for "
                                                    f"{bad}"}
    recovering.stop()
    recovering.workers.clear()
    recovering.start("cpu", concurrency=2)
    recovering.start("gpu")
    again = recovering.producer("enqueue", str(folder), "--retry-failed", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "4 inputs, 3 already finished" in again.stdout
    assert_complete_and_identical(recovering, run_id, folder, tmp_path)


def test_an_image_out_of_memory_even_tiled_fails_alone_simulated_oom(recovering, tmp_path):
    """A batch of four same-size images, one of which never fits (simulated CUDA out of memory at
    every tile size): the other three are done on their first try, only it fails."""
    folder = tmp_path / "in"
    names = write_images(folder, 3)
    (folder / "test_00009_flat.png").write_bytes(png_bytes(np.full((24, 32, 3), 40, np.uint8)))
    recovering.start("cpu", concurrency=2)
    # CPU_BATCH_SIZE: the GPU-queue worker runs on this CPU, where batches are 1 by default; the scenario
    # needs 4. The learned preset has no CPU stage: the four messages are queued at once, not as NL-means
    # finishes each, and GPU_BATCH_WAIT_S gives a loaded machine time to deliver all four to one batch.
    recovering.env["PRESET"] = "learned"
    gpu = recovering.start("gpu", TASK_MAX_RETRIES="1", CPU_BATCH_SIZE="4", GPU_BATCH_WAIT_S="2",
                           **with_faults("oom-flat"))
    run_id = start_run(recovering, folder, tmp_path)
    summary = wait_for_summary(recovering, run_id, 120)
    assert (summary["written"], summary["failed"]) == (3, 1)
    reason = failures_of(recovering, run_id)["test_00009_flat.png"]
    assert reason.startswith("gave up after 2 transient errors: out of memory even with")
    assert "one at a time" in gpu.log.read_text()  # the batch was split, not rescheduled whole
    for name in names:
        assert json.loads(recovering.store().get(RunKeys(run_id).meta(name, "upscale")))  # done, once


def test_a_lost_aggregation_message_is_sent_again_by_the_sweep_simulated_at_the_broker(recovering, tmp_path):
    folder = tmp_path / "in"
    write_images(folder, 3)
    recovering.start("cpu", concurrency=2)
    recovering.start("gpu", **with_faults("lose-aggregate-once"))
    run_id = start_run(recovering, folder, tmp_path)
    wait_until(lambda: count(recovering, run_id, "rows") == 3, 120, "every row")
    assert summary_of(recovering, run_id) is None  # the one aggregation message was lost
    summary = wait_for_summary(recovering, run_id, STALL_S + 4 * SWEEP_S + 30)
    assert summary["written"] == 3
    assert_complete_and_identical(recovering, run_id, folder, tmp_path)


def test_redis_restarted_without_persistence_with_nobody_waiting_is_rebuilt_by_the_sweep(recovering, tmp_path):
    from testbed.servers import RedisServer

    volatile = RedisServer(tmp_path / "volatile-redis", appendonly=False)
    try:
        recovering.env.update(BROKER_URL=f"redis://{volatile.host}:{volatile.port}/0", REDIS_PASSWORD=volatile.password)
        folder = tmp_path / "in"
        write_images(folder, 10, width=96, height=64)
        recovering.start("cpu", concurrency=2)
        recovering.start("gpu")
        run_id = start_run(recovering, folder, tmp_path)
        wait_until(lambda: count(recovering, run_id, "rows") >= 2, 120, "first rows")
        volatile.stop()
        volatile.start()  # empty: queued tasks and the completion set are gone
        summary = wait_for_summary(recovering, run_id, 240)
        assert summary["written"] == 10
        assert_complete_and_identical(recovering, run_id, folder, tmp_path)
    finally:
        recovering.stop()
        volatile.stop()


def test_redis_outage_of_60s_loses_nothing_while_cpu_workers_hand_over_and_gpu_batches_reschedule(recovering, tmp_path):
    """Redis down for 60 s mid-run (S3 down for part of it, so GPU batches fail transiently and must
    reschedule while Redis is gone): denoised images are handed over and rescheduled images
    published once Redis is back; nothing is dropped.

    STALL_AFTER_S is two outages long, so the sweep cannot re-enqueue the run when Redis comes
    back: the publish path itself rides the outage out. The sweep still mends what only it can:
    kombu's Redis transport takes a message with BRPOP and records it as unacknowledged in a second
    command, so a message taken in the instant Redis stops is gone from Redis (seen once in seven
    runs); storage still says the image is unfinished, and the sweep re-enqueues it."""
    recovering.env.update(STALL_AFTER_S="120")
    folder = tmp_path / "in"
    write_images(folder, 12, width=96, height=64)
    recovering.start("cpu", concurrency=2)
    recovering.start("gpu")
    run_id = start_run(recovering, folder, tmp_path)
    wait_until(lambda: count(recovering, run_id, "denoised") >= 2, 120, "denoising under way")
    recovering.redis.stop()
    time.sleep(5)
    recovering.s3.stop()
    time.sleep(25)
    recovering.s3.start()
    time.sleep(30)
    recovering.redis.start()
    summary = wait_for_summary(recovering, run_id, 300)
    assert (summary["written"], summary["failed"]) == (12, 0)
    assert_complete_and_identical(recovering, run_id, folder, tmp_path)


def test_redis_down_longer_than_the_retry_budget_while_a_gpu_batch_is_claimed_strands_nothing(recovering, tmp_path):
    """Redis stops while a GPU batch is claimed, and stays down longer than the workers' retries
    (REDIS_OUTAGE_S): the batch's finish, its releases and the reschedule of an image that met a
    transient error are lost (its acknowledgements may be too). Once Redis is back, with the default
    VISIBILITY_TIMEOUT_S (an hour) and nobody watching, every hold ends and the run completes: the
    live worker's heartbeat releases what it could not, the sweep hands back a delivery nobody works
    on or sends again an image with no message, and aggregates.

    The transient error is simulated (one input's object is never served, so it ends failed after
    its retries); the outage is real."""
    recovering.env.update(VISIBILITY_TIMEOUT_S="3600", REDIS_OUTAGE_S="2", PRESET="learned")
    folder = tmp_path / "in"
    done, unreachable = write_images(folder, 2)
    go = tmp_path / "go"
    recovering.start("cpu")
    gpu = recovering.start("gpu", TASK_MAX_RETRIES="1", GPU_BATCH_WAIT_S="2",
                           **with_faults(f"pause-stage-until:{go}", f"storage-down:{unreachable}"))
    run_id = start_run(recovering, folder, tmp_path)
    wait_until(lambda: PAUSE_MARK in gpu.log.read_text(errors="replace"), 120, "the GPU batch to be claimed")
    assert set(recovering.redis_client().hgetall(f"lowlight:run:{run_id}:held")) == {done.encode(), unreachable.encode()}
    recovering.redis.stop()
    go.touch()
    wait_until(lambda: "could not send task-failed events" in gpu.log.read_text(errors="replace"), 120,
               "the batch to end with Redis still down")
    recovering.redis.start()
    back = time.monotonic()
    # A second GPU worker, as the queue's autoscaler or a replaced pod brings one: whether the first
    # one's consumer notices the restart is Celery's (it does not always: see docs/reliability.md), and what
    # it held must end either way.
    recovering.start("gpu", TASK_MAX_RETRIES="1", **with_faults(f"storage-down:{unreachable}"))
    summary = wait_for_summary(recovering, run_id, 180)
    took = time.monotonic() - back
    print(f"\nRedis down past REDIS_OUTAGE_S=2 with a GPU batch claimed: run complete {took:.1f} s after Redis came "
          f"back (STALL_AFTER_S={STALL_S}, sweep every {SWEEP_S} s, VISIBILITY_TIMEOUT_S=3600)")
    assert (summary["written"], summary["failed"], summary["pending"]) == (1, 1, 0)
    assert failures_of(recovering, run_id) == {
        unreachable: f"gave up after 2 transient errors: simulated: S3 unreachable for {unreachable}"}
    assert recovering.redis_client().hlen(f"lowlight:run:{run_id}:held") == 0


def test_a_malformed_upscale_message_is_dropped_alone_not_with_its_batch(recovering, tmp_path):
    from workers.runtime.app import UPSCALE, create_app
    from workers.settings import Settings

    folder = tmp_path / "in"
    write_images(folder, 3)
    app = create_app(Settings.from_env(recovering.env))
    app.send_task(UPSCALE, ())  # queued first: the GPU worker takes it in the same batch as the images
    run_id = start_run(recovering, folder, tmp_path, "--denoise-on", "gpu")
    gpu = recovering.start("gpu")
    recovering.start("cpu")
    summary = wait_for_summary(recovering, run_id, 120)
    assert summary["written"] == 3
    assert "dropping a malformed upscale message" in gpu.log.read_text()


def test_status_shows_progress_stall_and_what_the_sweep_did(recovering, tmp_path):
    folder = tmp_path / "in"
    write_images(folder, 2)
    run_id = start_run(recovering, folder, tmp_path)  # no worker yet: nothing moves
    time.sleep(STALL_S + 1)
    status = recovering.producer("status", run_id, cwd=tmp_path)
    assert "queued or in progress: 2 at the CPU stage, 0 at the GPU stage" in status.stdout
    assert "stalled" in status.stdout, status.stdout
    recovering.start("cpu")  # its sweeper finds the stalled run's messages queued: nothing to send again
    wait_until(lambda: "recovery:" in recovering.producer("status", run_id, cwd=tmp_path).stdout, 60,
               "the sweep to record what it did")
    recovering.start("gpu")
    assert wait_for_summary(recovering, run_id, 120)["written"] == 2


def test_a_backlog_of_runs_holds_one_message_per_image_and_a_cancel_outlives_redis(recovering, tmp_path):
    """Three runs wait behind each other at the GPU queue (no GPU worker yet) through several stall
    periods: the sweep sends nothing twice, each image has one message. One run is cancelled, then
    Redis restarts without persistence: the sweep rebuilds the two others with one message per
    image, and leaves the cancelled one cancelled (its cancel is in storage). Both aggregate once a
    GPU worker comes; enqueueing the cancelled run is refused until --resume-cancelled."""
    from testbed.servers import RedisServer

    volatile = RedisServer(tmp_path / "volatile-redis", appendonly=False)
    try:
        stall = 3
        recovering.env.update(BROKER_URL=f"redis://{volatile.host}:{volatile.port}/0", REDIS_PASSWORD=volatile.password,
                              STALL_AFTER_S=str(stall), SWEEP_INTERVAL_S="1")
        folders = [tmp_path / f"in{k}" for k in range(3)]
        for k, folder in enumerate(folders):
            write_images(folder, 3, prefix=f"test_{k}")
        runs = [start_run(recovering, folder, tmp_path) for folder in folders]
        cancelled = recovering.producer("cancel", runs[2], cwd=tmp_path)
        assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
        redis = volatile.client()
        recovering.start("cpu", concurrency=2)  # denoises the live runs; its sweeper runs every second
        wait_until(lambda: redis.llen("cpu") == 0 and not redis.hlen("unacked") and redis.llen("gpu") == 6, 120,
                   "the two live runs to wait at the GPU queue")

        def gpu_messages() -> Counter:
            return Counter(tuple(args) for args in queued_args(redis, "gpu"))

        time.sleep(4 * stall)  # four stall periods behind the backlog
        expected = Counter({(run, path.name): 1 for run, folder in zip(runs[:2], folders, strict=False)
                            for path in folder.iterdir()})
        assert gpu_messages() == expected
        assert redis.llen("sweep") <= 1  # one sweep per period, never a pile behind the backlog

        volatile.stop()
        volatile.start()  # empty: the queued messages, the counts and the cancel flag are gone
        wait_until(lambda: redis.llen("gpu") == 6, 60, "the sweep to rebuild the two live runs")
        time.sleep(2 * stall)
        assert gpu_messages() == expected
        assert redis.exists(f"lowlight:run:{runs[2]}:cancelled")  # the sweep put the flag back

        recovering.start("gpu")
        for run_id in runs[:2]:
            assert wait_for_summary(recovering, run_id, 120)["written"] == 3
        assert summary_of(recovering, runs[2]) is None and count(recovering, runs[2], "rows") == 0
        refused = recovering.producer("enqueue", str(folders[2]), cwd=tmp_path)
        assert refused.returncode == 2 and "--resume-cancelled" in refused.stderr, refused.stdout + refused.stderr
        resumed = recovering.producer("enqueue", str(folders[2]), "--resume-cancelled", cwd=tmp_path)
        assert resumed.returncode == 0 and "3 rows written" in resumed.stdout, resumed.stdout + resumed.stderr
    finally:
        recovering.stop()
        volatile.stop()


def queued_args(client, queue: str) -> list[list]:
    return [json.loads(base64.b64decode(json.loads(raw)["body"]))[0] for raw in client.lrange(queue, 0, -1)]
