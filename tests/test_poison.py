"""Poison inputs and dying workers: every image ends, none crash-loops a pool.

Real redis-server, weed mini and Celery workers, runs enqueued with ``--no-wait`` (nobody watching:
the workers and their sweep must end everything). Where a worker must die, the kernel kills it:
the worker runs in a cgroup v1 memory group (:mod:`testbed.memory`), as a container runs under its
memory limit, and is restarted whenever it dies, as a Deployment restarts its pod. Simulated
crashes and bugs (``die-on``, ``raise-on`` in ``tests/simulated/sitecustomize.py``) are used only
where a crash must hit one image of a batch of same-size images, which no memory limit can single
out, and for the bugs no real code has.
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid

import numpy as np
import pytest

from testbed.memory import MemoryLimit, unavailable
from testbed.workers import CeleryWorker
from tests.helpers.cluster import SIMULATED, Cluster, wait_until
from tests.helpers.images import noisy_image, png_bytes, write_images
from tests.helpers.scenarios import failures_of, start_run, summary_of, wait_for_summary, with_faults
from workers.run.attempts import read_attempts
from workers.run.keys import RunKeys

pytestmark = [pytest.mark.integration, pytest.mark.faults]

MIB = 1024 * 1024
# Headroom a worker gets beyond what it held when it became ready. A GPU-queue worker (the compact
# model on the CPU here) grows about 15 MB over its first batches of 32x24 images, and about 190 MB
# for one 640x480 input: that input is the legitimate photo whose 4x output does not fit its pod.
GPU_HEADROOM = 100 * MIB
HOLD_MARK = "simulated hold-until"  # tests/simulated/sitecustomize.py


def needs_memory_groups() -> None:
    reason = unavailable()
    if reason:
        pytest.skip(f"the kernel must kill the worker: {reason}")


def start_limited(cluster: Cluster, queue: str, limit: MemoryLimit, concurrency: int = 1, **env: str) -> CeleryWorker:
    """A worker inside ``limit``'s memory group, moved there once loaded and before its first message."""
    gate = cluster.logs / f"gate-{uuid.uuid4().hex[:8]}"
    simulate = ",".join(filter(None, [env.pop("SIMULATE", ""), f"hold-until:{gate}"]))
    worker = CeleryWorker(queue, {**cluster.env, **env, "PYTHONPATH": SIMULATED, "SIMULATE": simulate}, cluster.logs,
                          concurrency=concurrency)
    cluster.workers.append(worker)
    wait_until(lambda: HOLD_MARK in worker.log.read_text(errors="replace") or not worker.alive(), 180,
               f"{worker.name} to load")
    limit.add(worker.pid)
    gate.touch()
    # Loaded already (the hold comes after start-up): from here it may die at once, killed for its
    # first message, before anyone reads "ready" in its log; the callers restart what died.
    return worker


def test_a_photo_the_kernel_kills_its_gpu_worker_for_fails_after_three_deaths_and_its_batch_mates_finish(
        recovering, tmp_path):
    """The issue's scenario: a GPU worker under a memory limit, restarted whenever it dies, and a
    legitimate large photo whose 4x output does not fit that limit among small images. The kernel
    OOM-kills the worker three times; the next delivery records the photo as failed; the others are
    done, the run aggregates with nobody watching, and --retry-failed takes the photo again."""
    needs_memory_groups()
    folder = tmp_path / "in"
    names = write_images(folder, 4)
    photo = "test_00009_photo.png"
    (folder / photo).write_bytes(png_bytes(noisy_image(640, 480, seed=9)))
    recovering.env["MAX_IMAGE_PIXELS"] = "1000000"
    recovering.start("cpu", concurrency=2)
    with MemoryLimit(GPU_HEADROOM) as limit:
        gpu = start_limited(recovering, "gpu", limit)
        started = time.monotonic()
        run_id = start_run(recovering, folder, tmp_path)
        restarts = 0

        def restart_and_check() -> bool:  # a Deployment: the pod comes back whenever it dies
            nonlocal gpu, restarts
            if not gpu.alive():
                restarts += 1
                gpu = start_limited(recovering, "gpu", limit)
            return summary_of(recovering, run_id) is not None

        wait_until(restart_and_check, 420, f"run {run_id} to aggregate", poll=0.5)
        took = time.monotonic() - started
        kills = limit.oom_kills()
    summary = summary_of(recovering, run_id)
    print(f"\nGPU poison (640x480 under a {GPU_HEADROOM // MIB} MiB limit): failed and the run aggregated "
          f"{took:.1f} s after the enqueue; {kills} OOM kills, {restarts} restarts "
          f"(STALL_AFTER_S={recovering.env['STALL_AFTER_S']}, sweep every {recovering.env['SWEEP_INTERVAL_S']} s)")
    assert (summary["written"], summary["failed"], summary["pending"]) == (4, 1, 0)
    assert re.fullmatch(r"worker died 3 times while processing it; last gpu-\w+@127\.0\.0\.1, upscale",
                        failures_of(recovering, run_id)[photo])
    assert kills == 3 and restarts == 3  # killed by the kernel each time, never a fourth
    store = recovering.store()
    assert all(read_attempts(store, run_id, name, "upscale").deaths == 0 for name in names)

    recovering.stop()
    recovering.workers.clear()
    again = recovering.producer("enqueue", str(folder), "--retry-failed", "--no-wait", cwd=tmp_path)
    assert again.returncode == 0 and "5 inputs, 4 already finished" in again.stdout, again.stdout + again.stderr
    assert queued_names(recovering, "gpu") == [photo]  # taken again, from where it was (denoised) ...
    assert not store.exists(RunKeys(run_id).attempts(photo, "upscale"))  # ... with its count started afresh

# A CPU worker's pool child copies about 65 MB of its parent's pages as it starts (CPython's reference
# counts write to them), so two children need about 130 MB; decoding a 36-megapixel input takes
# about 11.5 bytes a pixel, 415 MB.
CPU_HEADROOM = 320 * MIB


def gradient_png(width: int, height: int) -> bytes:
    """A legitimate large photo that compresses well: small to upload, large once decoded."""
    y, x = np.mgrid[0:height, 0:width]
    return png_bytes(np.stack([x % 256, y % 256, (x + y) % 256], axis=-1).astype(np.uint8))


def test_a_cpu_pool_child_the_kernel_kills_and_a_bug_in_every_task_each_end_one_image_not_the_run(
        recovering, tmp_path):
    """One run, every way one image can keep failing, while the workers keep serving the rest:

    * a 36-megapixel input whose decoding does not fit the CPU worker's memory group: the kernel
      kills the prefork child decoding it, Celery requeues its message at once (the loop Celery's
      documentation warns of), each requeue is a death, and the fourth delivery records it failed;
    * an input the denoise task raises for, and one the upscale task raises for (a bug): each is
      retried until TASK_MAX_ERRORS, then failed with the error's type and message; the upscale
      one first failed in a batch with the healthy images, which are then done alone;
    * the aggregation raises once: retried, the run aggregates.

    --retry-failed then takes the three again, with their counts started afresh."""
    needs_memory_groups()
    folder = tmp_path / "in"
    names = write_images(folder, 4)
    healthy, denoise_bug, upscale_bug = names[:2], names[2], names[3]
    huge = "test_00009_huge.png"
    (folder / huge).write_bytes(gradient_png(6000, 6000))
    recovering.env.update(MAX_IMAGE_PIXELS="40000000", TASK_MAX_ERRORS="2")
    with MemoryLimit(CPU_HEADROOM) as limit:
        cpu = start_limited(recovering, "cpu", limit, concurrency=2,
                            SIMULATE=f"raise-on:{denoise_bug},raise-once:aggregate")
        recovering.start("gpu", **with_faults(f"raise-on:{upscale_bug}"))
        started = time.monotonic()
        run_id = start_run(recovering, folder, tmp_path)
        summary = wait_for_summary(recovering, run_id, 300)
        took = time.monotonic() - started
        kills = limit.oom_kills()
        assert cpu.alive()  # only its pool children died
    print(f"\nCPU poison (36 MP under a {CPU_HEADROOM // MIB} MiB limit) and a bug in each task: run aggregated "
          f"{took:.1f} s after the enqueue; {kills} OOM kills")
    failures = failures_of(recovering, run_id)
    assert (summary["written"], summary["failed"], summary["pending"]) == (2, 3, 0), failures
    assert re.fullmatch(r"worker died 3 times while processing it; last cpu-\w+@127\.0\.0\.1, denoise", failures[huge])
    assert kills == 3
    for name, stage in ((denoise_bug, "denoise"), (upscale_bug, "upscale")):
        assert failures[name] == f"unexpected error (2 times, at {stage}): ValueError: simulated: a bug on {name}"
    store = recovering.store()
    assert all(read_attempts(store, run_id, name, "upscale").errors <= 1 for name in healthy)  # its batch-mates
    assert "simulated: aggregation bug" in cpu.log.read_text()

    recovering.stop()
    recovering.workers.clear()
    again = recovering.producer("enqueue", str(folder), "--retry-failed", "--no-wait", cwd=tmp_path)
    assert again.returncode == 0 and "5 inputs, 2 already finished" in again.stdout, again.stdout + again.stderr
    assert sorted(queued_names(recovering, "cpu")) == sorted([huge, denoise_bug])
    assert queued_names(recovering, "gpu") == [upscale_bug]  # it was denoised: it goes on from there
    assert not any(store.exists(RunKeys(run_id).attempts(name, stage))
                   for name in (huge, denoise_bug, upscale_bug) for stage in ("denoise", "upscale"))


def queued_names(cluster: Cluster, queue: str) -> list[str]:
    """The input names of the image messages waiting in ``queue``."""
    messages = [json.loads(raw) for raw in cluster.redis_client().lrange(queue, 0, -1)]
    return [json.loads(base64.b64decode(m["body"]))[0][1] for m in messages
            if m["headers"]["task"] in ("workers.tasks.denoise", "workers.tasks.upscale")]


def test_a_crash_in_a_shared_forward_pass_isolates_the_batch_and_fails_only_the_culprit_simulated(
        recovering, tmp_path):
    """Four same-size images in one forward pass, one of which crashes the GPU worker (simulated:
    the kernel cannot single out one image of a batch of equals). All four are charged one death;
    from then on each runs in a pass of its own, so its batch-mates finish on their next delivery
    and only the culprit goes on dying, until its delivery after MAX_WORKER_DEATHS (2 here, to keep
    the restarts few) records it as failed."""
    folder = tmp_path / "in"
    names = write_images(folder, 4)
    culprit = names[1]
    # the four messages make one batch and one forward pass (on a CPU a pass holds 1 image by default)
    recovering.env.update(GPU_BATCH_WAIT_S="2", MAX_WORKER_DEATHS="2", CPU_BATCH_SIZE="4")
    gpu_env = {"SIMULATE": f"die-on:{culprit}", "PYTHONPATH": SIMULATED}
    recovering.start("cpu")
    run_id = start_run(recovering, folder, tmp_path, "--denoise-on", "gpu")  # all four wait at the GPU queue
    gpu = recovering.launch("gpu", **gpu_env)
    restarts = 0

    def restart_and_check() -> bool:  # it may die before it even says it is ready
        nonlocal gpu, restarts
        if not gpu.alive():
            restarts += 1
            gpu = recovering.launch("gpu", **gpu_env)
        return summary_of(recovering, run_id) is not None

    wait_until(restart_and_check, 300, f"run {run_id} to aggregate", poll=0.5)
    summary = summary_of(recovering, run_id)
    assert (summary["written"], summary["failed"]) == (3, 1), failures_of(recovering, run_id)
    assert failures_of(recovering, run_id)[culprit].startswith("worker died 2 times while processing it; last gpu-")
    assert restarts == 2
    store = recovering.store()
    for name in names:
        attempts = read_attempts(store, run_id, name, "upscale")
        assert attempts.alone and attempts.deaths == (2 if name == culprit else 1), attempts


def test_a_configuration_error_is_reported_once_loudly_and_the_waiting_producer_says_why(recovering, tmp_path):
    """A CPU worker whose S3 credentials are refused (as after a rotated secret): every image it takes
    meets the same error. It is logged critical once and flagged on the run, the sweep does not
    send the run's work again and again, and the waiting producer stops with the error instead of
    waiting for ever."""
    folder = tmp_path / "in"
    write_images(folder, 3)
    recovering.env.update(STALL_AFTER_S="3", SWEEP_INTERVAL_S="1")
    cpu = recovering.start("cpu", AWS_SECRET_ACCESS_KEY="rotated")
    result = recovering.producer("enqueue", str(folder), cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "ConfigError: S3 refused" in result.stderr and "AWS_SECRET_ACCESS_KEY" in result.stderr
    assert "workers report a configuration error" in result.stderr
    log = cpu.log.read_text()
    assert log.count("CONFIGURATION ERROR, every image of this kind will fail") == 1  # the run's, once


def test_a_lost_device_hands_its_batch_back_uncounted_and_the_worker_leaves(recovering, tmp_path):
    """A broken CUDA context (simulated: no card here) is neither the images' fault nor something that
    passes: the GPU worker hands the whole batch back to the queue, charging nothing to the images,
    and shuts down so that its pod is replaced; a healthy worker then finishes the run."""
    folder = tmp_path / "in"
    names = write_images(folder, 3)
    recovering.start("cpu", concurrency=2)
    lost = recovering.start("gpu", **with_faults("device-lost"))
    run_id = start_run(recovering, folder, tmp_path)
    wait_until(lambda: not lost.alive(), 120, "the worker with the lost device to shut down")
    assert "the device is lost" in lost.log.read_text(errors="replace")
    recovering.start("gpu")
    summary = wait_for_summary(recovering, run_id, 180)
    assert (summary["written"], summary["failed"], summary["pending"]) == (3, 0, 0)
    store = recovering.store()
    for name in names:
        attempts = read_attempts(store, run_id, name, "upscale")
        assert (attempts.errors, attempts.deaths) == (0, 0), attempts
