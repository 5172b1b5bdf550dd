"""The distributed system end to end: real redis-server, real S3 (weed), real Celery workers.

The GPU queue's worker runs Real-ESRGAN on the CPU here (no GPU exists on CI).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers.cluster import run_id_from, wait_until
from tests.helpers.images import noisy_image, png_bomb, png_bytes, write_images
from tests.helpers.paths import DATASET
from tests.helpers.runs import run_producer
from tests.helpers.scenarios import with_faults
from tests.simulated.sitecustomize import STALL_MARK
from workers.run.keys import RunKeys
from workers.runtime.app import create_app
from workers.settings import Settings

pytestmark = pytest.mark.integration


def test_distributed_submission_is_identical_to_embedded(cluster, tmp_path):
    cluster.start_default()
    result = cluster.producer("enqueue", str(DATASET), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    run_id = run_id_from(result.stdout)
    s3 = cluster.store()
    keys = RunKeys(run_id)
    manifest = json.loads(s3.get(keys.manifest))
    assert manifest["source"] == f"s3://{cluster.bucket}/runs/{run_id}/input"  # local inputs were uploaded

    out = tmp_path / "distributed.csv"
    collected = cluster.producer("collect", run_id, "-o", str(out), cwd=tmp_path)
    assert collected.returncode == 0, collected.stderr
    assert out.read_text() == cluster.embedded_submission(str(DATASET), tmp_path)

    status = cluster.producer("status", run_id, cwd=tmp_path)
    assert "done 8" in status.stdout and "8 rows, 0 failed" in status.stdout
    again = cluster.producer("aggregate", run_id, cwd=tmp_path)
    assert again.returncode == 0 and "8 rows" in again.stdout
    assert s3.get(keys.submission).decode() == out.read_text()
    # The report the aggregate task wrote: timed from the producer's enqueue, the metas being the workers'.
    report = s3.get(keys.report).decode()
    assert s3.exists(keys.started) and "Timed from the enqueue at" in report
    assert re.search(r"<td>[\d.]+ (ms|s|min)</td><td>[\d.]+</td></tr></table>", report)  # wall time, images/s


def test_a_dataset_uploaded_to_the_bucket_runs_from_there(cluster, tmp_path):
    """docs/deploy.md's path for inputs in object storage: `producer upload`, then enqueue the bucket's
    copy (a dataset root: its test/ split, its sample submission checked)."""
    cluster.start_default()
    uploaded = cluster.producer("upload", str(DATASET), f"s3://{cluster.bucket}/sample", cwd=tmp_path)
    assert uploaded.returncode == 0, uploaded.stderr
    assert "uploaded" in uploaded.stdout
    result = cluster.producer("enqueue", f"s3://{cluster.bucket}/sample", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    run_id = run_id_from(result.stdout)
    assert cluster.store().get(RunKeys(run_id).submission).decode() == cluster.embedded_submission(str(DATASET), tmp_path)


@pytest.mark.parametrize(("preset", "queue", "task"), [
    ((), "gpu", "workers.tasks.upscale"),  # the default (learned): nothing for the CPU to do
    (("--preset", "standard"), "cpu", "workers.tasks.denoise"),  # NL-means first
])
def test_messages_carry_ids_not_pixels_to_the_pipelines_first_stage(cluster, tmp_path, preset, queue, task):
    """No worker running: look at the queued messages themselves."""
    write_images(tmp_path / "in", 3, width=64, height=48)
    result = cluster.producer("enqueue", str(tmp_path / "in"), "--no-wait", *preset, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    redis = cluster.redis_client()
    messages = redis.lrange(queue, 0, -1)
    assert len(messages) == 3 and redis.llen("gpu" if queue == "cpu" else "cpu") == 0
    for raw in messages:
        message = json.loads(raw)
        assert message["content-type"] == "application/json"
        assert len(raw) < 4096  # a 64x48 PNG alone would be larger than the whole message
        assert message["headers"]["task"] == task


MODEL_LOADED = re.compile(r"loaded \S+ \([^)]+\) on \w+")  # workers/ops/upscale.py, once per model


def test_gpu_workers_load_only_the_models_runs_need_and_one_that_cannot_load_stops_the_producer(cluster, tmp_path):
    """A GPU-queue worker loads no model at start-up (it is ready in seconds, and a model it would
    never run cannot hold it up), only torch: the first batch of a run loads what that run needs. A run of a
    model the worker cannot load (the seed's, from the Hub, offline) is a configuration error: the
    waiting producer stops with it (exit 2) as soon as a worker reports it, not at 0/N for ever."""
    cluster.start("cpu")
    gpu = cluster.start("gpu")
    assert "libtorch" in Path(f"/proc/{gpu.pid}/maps").read_text()
    assert not MODEL_LOADED.search(gpu.log.read_text())
    write_images(tmp_path / "in", 2)
    learned = cluster.producer("enqueue", str(tmp_path / "in"), cwd=tmp_path)
    assert learned.returncode == 0, learned.stdout + learned.stderr
    assert MODEL_LOADED.search(gpu.log.read_text())  # the run's own checkpoint, on its first batch
    gpu.stop()

    cluster.start("gpu", WEIGHTS="", WEIGHTS_DIR=str(tmp_path / "no-weights"), HF_HUB_OFFLINE="1",
                  HF_HOME=str(tmp_path / "empty-hf-cache"))
    # Bounded well below STALL_AFTER_S (600 s here), where the producer used to give up.
    hub = run_producer("enqueue", str(tmp_path / "in"), "--preset", "standard", env=cluster.env, cwd=tmp_path,
                       timeout=300)
    assert hub.returncode == 2, hub.stdout + hub.stderr
    assert "workers report a configuration error" in hub.stderr and "WeightsUnavailableError" in hub.stderr
    assert "Traceback" not in hub.stderr


def test_gpu_worker_killed_mid_run_another_finishes_it_exactly_once(cluster, tmp_path):
    """The doomed worker's forward passes hang (simulated), so the kill lands inside one on any machine."""
    write_images(tmp_path / "in", 12, width=48, height=40)
    cluster.start("cpu", concurrency=2)
    doomed = cluster.start("gpu", **with_faults("stall-forward"))
    result = cluster.producer("enqueue", str(tmp_path / "in"), "--no-wait", cwd=tmp_path)
    run_id = run_id_from(result.stdout)
    s3, keys = cluster.store(), RunKeys(run_id)

    wait_until(lambda: STALL_MARK in doomed.log.read_text(errors="replace"), 120,
               "the first batch to reach the GPU worker's forward pass")
    doomed.kill()
    assert not list(s3.list(keys.prefix("rows"))), "nothing can be upscaled before the kill"

    cluster.start("gpu")  # picks up the dead worker's unacknowledged messages after VISIBILITY_TIMEOUT_S
    waited = cluster.producer("enqueue", str(tmp_path / "in"), cwd=tmp_path)  # resumes and waits
    assert waited.returncode == 0, waited.stdout + waited.stderr

    rows = s3.get(keys.submission).decode().splitlines()[1:]
    ids = [r.split(",", 1)[0] for r in rows]
    assert sorted(ids) == sorted(f"gt_{i:05d}" for i in range(1, 13))
    assert len(ids) == len(set(ids))
    assert s3.get(keys.submission).decode() == cluster.embedded_submission(str(tmp_path / "in"), tmp_path)


def test_the_same_task_delivered_twice_changes_nothing(cluster, tmp_path):
    cluster.start_default()
    write_images(tmp_path / "in", 2)
    result = cluster.producer("enqueue", str(tmp_path / "in"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_id = run_id_from(result.stdout)
    s3, keys = cluster.store(), RunKeys(run_id)
    name = "test_00001.png"
    client = cluster.s3.client()

    # the default pipeline has no CPU stage: a stray denoise message must not write denoised/ either
    tracked = [keys.denoised(name), keys.sr(name), keys.row(name), keys.submission, keys.summary]

    def snapshot() -> dict[str, tuple[bytes, object]]:
        return {k: (s3.get(k), client.stat_object(cluster.bucket, k).last_modified) for k in tracked if s3.exists(k)}

    before = snapshot()
    app = create_app(Settings.from_env(cluster.env))
    for _ in range(2):
        app.send_task("workers.tasks.denoise", (run_id, name))
        app.send_task("workers.tasks.upscale", (run_id, name))
    redis = cluster.redis_client()

    def consumed() -> bool:
        return redis.llen("cpu") == 0 and redis.llen("gpu") == 0 and not redis.hlen("unacked")

    wait_until(consumed, 60, "the duplicates to be consumed")
    time.sleep(1)
    assert snapshot() == before  # no object rewritten, no second aggregation
    rows = s3.get(keys.submission).decode().splitlines()
    assert len(rows) == 3


def test_bad_objects_in_the_bucket_fail_alone(cluster, tmp_path):
    cluster.start_default()
    client = cluster.s3.client()
    objects = {
        "inbox/test_00001.png": png_bytes(noisy_image(32, 24, seed=1)),
        "inbox/test_00002.png": png_bytes(noisy_image(32, 24, seed=2)),
        "inbox/test_00003.png": png_bytes(noisy_image(32, 24, seed=3))[:150],
        "inbox/test_00004.png": b"%PDF-1.4 not an image",
        "inbox/test_00005.png": png_bomb(3000, 3000),
    }
    import io

    for key, data in objects.items():
        client.put_object(cluster.bucket, key, io.BytesIO(data), len(data))
    result = cluster.producer("enqueue", f"s3://{cluster.bucket}/inbox", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    run_id = run_id_from(result.stdout)
    s3, keys = cluster.store(), RunKeys(run_id)
    failures = {f["name"]: f["reason"] for f in json.loads(s3.get(keys.failures))}
    assert set(failures) == {"test_00003.png", "test_00004.png", "test_00005.png"}
    assert "truncated" in failures["test_00003.png"]
    assert "not a recognised image" in failures["test_00004.png"]
    assert "MAX_IMAGE_PIXELS" in failures["test_00005.png"]
    assert len(s3.get(keys.submission).decode().splitlines()) == 3
    assert json.loads(s3.get(keys.manifest))["source"] == f"s3://{cluster.bucket}/inbox"


def test_wrong_s3_credentials_is_one_clear_line(cluster, tmp_path):
    write_images(tmp_path / "in", 1)
    result = cluster.producer("enqueue", str(tmp_path / "in"), cwd=tmp_path, AWS_SECRET_ACCESS_KEY="wrong")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "AWS_SECRET_ACCESS_KEY" in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("case", ["unreachable", "wrong-password"])
def test_redis_problems_are_one_clear_line(cluster, tmp_path, case):
    from testbed.servers import free_port

    write_images(tmp_path / "in", 1)
    extra = {"BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"} if case == "unreachable" else {"REDIS_PASSWORD": "nope"}
    result = cluster.producer("enqueue", str(tmp_path / "in"), cwd=tmp_path, **extra)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "Redis" in result.stderr
    assert cluster.redis.password not in result.stderr


def test_denoising_on_the_gpu_worker_needs_no_cpu_stage(cluster, tmp_path):
    cpu, _ = cluster.start("cpu", concurrency=1), cluster.start("gpu")
    result = cluster.producer("enqueue", str(DATASET), "--denoise-on", "gpu", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    run_id = run_id_from(result.stdout)
    assert "Task workers.tasks.denoise[" not in cpu.log.read_text()  # the CPU worker only aggregated
    submission = cluster.store().get(RunKeys(run_id).submission).decode()
    assert submission == cluster.embedded_submission(str(DATASET), tmp_path)  # OpenCV on the CPU, same bytes


def test_a_summary_of_an_earlier_listing_is_not_reported_as_this_runs_outcome(cluster, tmp_path):
    """A re-enqueue with nothing left to do found the previous run's summary.json (written for other
    inputs) and reported it as complete; status showed it too."""
    folder = tmp_path / "in"
    write_images(folder, 2, width=16, height=12)
    cluster.start_default()
    first = cluster.producer("enqueue", str(folder), cwd=tmp_path)
    assert first.returncode == 0 and "2 rows written" in first.stdout, first.stdout + first.stderr
    run_id = run_id_from(first.stdout)
    cluster.stop()  # no worker: nothing aggregates the new listing yet
    (folder / "test_00002.png").unlink()

    with pytest.raises(subprocess.TimeoutExpired):  # it waits for this listing's aggregation
        run_producer("enqueue", str(folder), env=cluster.env, cwd=tmp_path, timeout=10)
    status = cluster.producer("status", run_id, cwd=tmp_path)
    assert "not aggregated since the inputs changed" in status.stdout and "2 rows" not in status.stdout

    cluster.start("cpu")
    again = cluster.producer("enqueue", str(folder), cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 rows written, 0 failed, 0 pending" in again.stdout
    assert "1 rows, 0 failed" in cluster.producer("status", run_id, cwd=tmp_path).stdout


def test_retries_waiting_for_their_eta_do_not_hold_the_gpu_workers_prefetch_slots(cluster, tmp_path):
    """Two images rescheduled a minute ahead fill a GPU worker's prefetch (one batch of 2); a third,
    ready now, must still be delivered and upscaled long before their ETA."""
    names = write_images(tmp_path / "in", 3)
    run_id = run_id_from(cluster.producer("enqueue", str(tmp_path / "in"), "--no-wait", cwd=tmp_path).stdout)
    redis = cluster.redis_client()
    redis.delete("gpu")  # replaced below: two retries with a countdown first, then a fresh message
    app = create_app(Settings.from_env(cluster.env))
    for name in names[:2]:
        app.send_task("workers.tasks.upscale", (run_id, name), countdown=90, retries=1)
    app.send_task("workers.tasks.upscale", (run_id, names[2]))
    cluster.start("gpu", GPU_BATCH_SIZE="2", GPU_BATCH_WAIT_S="0.5")
    s3, keys = cluster.store(), RunKeys(run_id)
    wait_until(lambda: s3.exists(keys.row(names[2])), 45, "the image without an ETA to be upscaled")
    assert not s3.exists(keys.row(names[0])) and not s3.exists(keys.row(names[1]))


def test_embedded_and_distributed_runs_fail_the_same_images_with_the_same_reasons(recovering, tmp_path, monkeypatch):
    """One failure policy: an undecodable input, a bug on one input (simulated) and an input whose
    object is never served (simulated storage outage) end failed with the same reasons whether the
    run is embedded or on workers; the healthy inputs are done in both."""
    from producer import embedded
    from producer.planning import prepare_run
    from tests.helpers.scenarios import failures_of, start_run, wait_for_summary
    from workers.errors import StorageUnavailableError
    from workers.io.storage import LocalStorage
    from workers.run import policy, stages
    from workers.run.context import StageContext
    from workers.run.presets import build_pipeline

    folder = tmp_path / "in"
    healthy = write_images(folder, 2)
    (folder / "test_00007_text.png").write_bytes(b"this is not an image\n")
    bug, down = "test_00008.png", "test_00009.png"
    for i, name in enumerate((bug, down)):
        (folder / name).write_bytes(png_bytes(noisy_image(32, 24, seed=8 + i)))
    limits = {"TASK_MAX_RETRIES": "1", "TASK_MAX_ERRORS": "2"}
    faults = with_faults(f"raise-on:{bug}", f"storage-down:{down}")
    recovering.start("cpu", concurrency=2, **limits, **faults)
    recovering.start("gpu", **limits, **faults)
    run_id = start_run(recovering, folder, tmp_path)
    distributed = failures_of(recovering, run_id) if wait_for_summary(recovering, run_id, 240) else {}

    settings = Settings.from_env({k: v for k, v in recovering.env.items() if k not in {"BROKER_URL", "STORAGE_URL"}},
                                 storage_url=str(tmp_path / "embedded"), **{k.lower(): v for k, v in limits.items()})
    real_read, real_denoise = stages.read_input, embedded.denoise_stage

    def read_input(ctx, manifest, name):  # as storage-down: the object of one input is never served
        if name == down:
            raise StorageUnavailableError(f"simulated: S3 unreachable for {name}")
        return real_read(ctx, manifest, name)

    def denoise_stage(ctx, run_id, name):  # as raise-on: a bug when the CPU stage starts on one input
        if name == bug:
            raise ValueError(f"simulated: a bug on {name}")
        return real_denoise(ctx, run_id, name)

    monkeypatch.setattr(stages, "read_input", read_input)
    monkeypatch.setattr(embedded, "denoise_stage", denoise_stage)
    monkeypatch.setattr(policy, "backoff_s", lambda retries: 0)  # the same decisions, without the waiting
    store = LocalStorage(tmp_path / "embedded")
    pipeline = build_pipeline(recovering.env["PRESET"])
    plan = prepare_run(settings, store, str(folder), pipeline)
    result = embedded.run_embedded(StageContext(settings, store), plan, show_progress=False)
    in_process = {f["name"]: f["reason"] for f in json.loads(store.get(RunKeys(plan.run_id).failures))}

    assert set(distributed) == {"test_00007_text.png", bug, down}
    assert in_process == distributed
    assert distributed[bug] == f"unexpected error (2 times, at denoise): ValueError: simulated: a bug on {bug}"
    assert distributed[down] == f"gave up after 2 transient errors: simulated: S3 unreachable for {down}"
    assert (result.written, result.failed) == (len(healthy), 3)
