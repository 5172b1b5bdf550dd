"""The learned preset: a dataset's trained model is found, published by hash, verified by the workers
that run it, and gives the same submission embedded and distributed."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.cluster import run_id_from, wait_until
from tests.helpers.images import write_images
from tests.helpers.models import make_random_compact
from tests.helpers.runs import run_producer
from workers.errors import TransientError
from workers.io.models import REPOSITORY_MODELS, load_registry
from workers.io.storage import LocalStorage
from workers.run.context import StageContext
from workers.run.keys import RunKeys
from workers.run.manifest import load_manifest
from workers.run.stages import upscale_stage
from workers.settings import Settings


@pytest.fixture(scope="module")
def trained_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of test inputs with a (small, random) model where `producer train` puts one."""
    root = tmp_path_factory.mktemp("learned") / "data"
    write_images(root / "test", 3, width=24, height=16)
    make_random_compact(root / "compact.pth")
    import spandrel
    from safetensors.torch import save_file

    model = spandrel.ModelLoader().load_from_file(root / "compact.pth").model
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, root / "trained_x4.safetensors")
    (root / "trained_x4.json").write_text(json.dumps({
        "kind": "lowlight-sr/training", "start": {"source": "file:compact.pth", "architecture": "RealESRGAN Compact"},
        "steps": 20, "best_step": 20, "holdout_psnr": 30.5, "seconds": 4.2, "pairs": {"train": 5},
        "curve": [{"step": 10, "holdout_psnr": 30.1}, {"step": 20, "holdout_psnr": 30.5}]}))
    (root / "compact.pth").unlink()
    return root


def env_for(tmp_path: Path) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if k not in {"BROKER_URL", "WEIGHTS", "STORAGE_URL"}}
    return {**env, "STORAGE_URL": str(tmp_path / "store"), "DEVICE": "cpu", "HF_HUB_OFFLINE": "1"}


@pytest.mark.slow
def test_a_trained_dataset_runs_learned_by_default_and_the_report_shows_the_training(trained_dataset, tmp_path):
    result = run_producer("enqueue", str(trained_dataset), env=env_for(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith("preset learned: model") and "trained_x4.safetensors, this dataset's own" in first
    run_id = run_id_from(result.stdout)
    store = LocalStorage(tmp_path / "store")
    pipeline = load_manifest(store, run_id).pipeline
    assert pipeline.upscaler == "learned" and pipeline.checkpoint == f"checkpoints/{pipeline.checkpoint_sha256}.safetensors"
    assert store.exists(pipeline.checkpoint) and store.exists(f"checkpoints/{pipeline.checkpoint_sha256}.json")
    report = store.get(RunKeys(run_id).report).decode()
    assert "Trained model" in report and "held-back PSNR" in report and "30.50 dB at step 20" in report
    standard = run_producer("enqueue", str(trained_dataset), "--preset", "standard", env=env_for(tmp_path), cwd=tmp_path)
    assert "preset learned" not in standard.stdout.splitlines()[0]


@pytest.mark.slow
def test_without_a_trained_model_enqueue_runs_the_shipped_model_and_says_so(tmp_path):
    write_images(tmp_path / "photos", 2)
    result = run_producer("enqueue", str(tmp_path / "photos"), env=env_for(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    registry = load_registry(REPOSITORY_MODELS)
    first = result.stdout.splitlines()[0]
    assert first.startswith(f"preset learned: shipped model {registry.default}")
    pipeline = load_manifest(LocalStorage(tmp_path / "store"), run_id_from(result.stdout)).pipeline
    assert pipeline.upscaler == "learned" and pipeline.checkpoint_sha256 == registry.entry(registry.default).sha256


def test_a_shipped_model_that_fails_its_hash_check_stops_enqueue_with_one_line(tmp_path):
    models = tmp_path / "models"
    shutil.copytree(REPOSITORY_MODELS, models)
    registry = load_registry(models)
    (models / registry.entry(registry.default).file).write_bytes(b"tampered")
    write_images(tmp_path / "photos", 1)
    result = run_producer("enqueue", str(tmp_path / "photos"), env={**env_for(tmp_path), "MODELS_DIR": str(models)},
                          cwd=tmp_path)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert "refusing to run a model that is not the one registered" in result.stderr


@pytest.mark.slow
def test_a_worker_refuses_a_checkpoint_whose_hash_does_not_match(trained_dataset, tmp_path):
    """A checkpoint replaced under the same key: the image is retried, never upscaled by the wrong model."""
    env = env_for(tmp_path)
    assert run_producer("enqueue", str(trained_dataset), "--tta", env=env, cwd=tmp_path).returncode == 0
    store = LocalStorage(tmp_path / "store")
    run_id = next(k.split("/")[1] for k in store.list("runs") if k.endswith("manifest.json"))
    pipeline = load_manifest(store, run_id).pipeline
    assert pipeline.tta
    store.put(pipeline.checkpoint, b"another model entirely")
    for key in store.list(RunKeys(run_id).prefix("rows")):
        store.delete(key)
    ctx = StageContext(Settings(storage_url=str(tmp_path / "store"), device="cpu",
                                model_cache_dir=str(tmp_path / "fresh-cache")))
    outcomes = upscale_stage(ctx, run_id, list(load_manifest(store, run_id).names))
    assert {o.status for o in outcomes} == {"retry"}
    assert isinstance(outcomes[0].error, TransientError) and "refusing to run another model" in outcomes[0].reason


@pytest.mark.integration
def test_no_options_distributed_is_identical_to_embedded_with_the_shipped_model(cluster, tmp_path):
    cluster.start_default()
    write_images(tmp_path / "photos", 3, width=24, height=16)
    result = cluster.producer("enqueue", str(tmp_path / "photos"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[0].startswith("preset learned: shipped model")
    distributed = cluster.store().get(RunKeys(run_id_from(result.stdout)).submission).decode()
    assert distributed.count("\n") == 4
    assert distributed == cluster.embedded_submission(str(tmp_path / "photos"), tmp_path)


@pytest.mark.integration
def test_learned_distributed_is_identical_to_embedded(cluster, trained_dataset, tmp_path):
    cluster.start_default()
    result = cluster.producer("enqueue", str(trained_dataset), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "preset learned" in result.stdout.splitlines()[0]
    run_id = run_id_from(result.stdout)
    distributed = cluster.store().get(RunKeys(run_id).submission).decode()
    assert distributed.count("\n") == 4  # header + 3 rows
    assert distributed == cluster.embedded_submission(str(trained_dataset), tmp_path)


@pytest.mark.integration
def test_training_runs_on_a_train_worker_in_chunks_and_a_chain_survives_a_copy_and_a_lost_publish(cluster, tmp_path):
    """`producer train s3://...` with a broker: a worker of the train queue trains in TRAIN_CHUNK_S chunks
    (each enqueues the next) and writes the checkpoint next to the dataset in the bucket.

    The chain is driven by the job's stored state: the first publish of a next chunk fails (as in
    an outage longer than its budget; the finished chunk is retried and sends it again), and a copy
    of a running chunk's message arrives too (dropped): the job still ends, having trained exactly
    its steps once."""
    from tests.helpers.cluster import SIMULATED
    from tests.helpers.training import write_dataset
    from workers.runtime.app import TRAIN, create_app
    from workers.training.config import TrainConfig
    from workers.training.job import TrainJob

    local = write_dataset(tmp_path / "local", count=5)
    start = make_random_compact(tmp_path / "start.pth")
    store = cluster.store()
    for path in sorted(local.rglob("*.png")):
        store.put(f"dataset/{path.relative_to(local).as_posix()}", path.read_bytes())
    worker = cluster.start("train", TRAIN_CHUNK_S="1", PYTHONPATH=SIMULATED, SIMULATE="lose-train-next-once")
    dataset = f"s3://{cluster.bucket}/dataset"
    config = ["--steps", "300", "--batch", "4", "--crop", "16", "--eval-every", "50"]
    producer = subprocess.Popen([sys.executable, "-m", "producer", "train", dataset, "--from", str(start), *config],
                                env=cluster.env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        marker_key = "dataset/trained_x4.safetensors.job.json"

        def second_chunk_running() -> dict | None:
            marker = json.loads(store.get(marker_key)) if store.exists(marker_key) else {}
            return marker if marker.get("chunk", 0) >= 1 and not marker.get("complete") else None

        wait_until(lambda: second_chunk_running() is not None, 180, "the second chunk to run")
        marker = second_chunk_running()
        if marker is not None:  # a copy of the running chunk's message
            published = f"checkpoint:{hashlib.sha256(start.read_bytes()).hexdigest()}.pth"  # as the producer sent it
            copy = TrainJob(dataset, None, published, dataclasses.asdict(TrainConfig(steps=300, batch=4, crop=16,
                            eval_every=50)), started_at=marker["job"], chunk=marker["chunk"])
            create_app(Settings.from_env(cluster.env)).send_task(TRAIN, (copy.to_dict(),), task_id=marker["task"])
        out, err = producer.communicate(timeout=300)
    finally:
        if producer.poll() is None:
            producer.kill()
            producer.communicate()
    assert producer.returncode == 0, out + err
    assert "trained 300 steps (budget used)" in out
    assert store.exists("dataset/trained_x4.safetensors") and store.exists("dataset/calibration.json")
    marker = json.loads(store.get(marker_key))
    assert marker["done"] and marker["chunk"] >= 1  # more than one chunk ran
    provenance = json.loads(store.get("dataset/trained_x4.json"))
    assert provenance["steps"] == 300 and provenance["finished"]
    wait_until(lambda: not cluster.redis_client().llen("train"), 30, "the train queue to drain")
    log = worker.log.read_text()
    assert "simulated: Redis unreachable" in log and "'status': 'resend'" in log  # the lost next chunk, sent again
    assert "'status': 'held'" in log or "'status': 'duplicate'" in log  # the copy, dropped
    assert np.isfinite(provenance["holdout_psnr"])
    shutil.rmtree(local)


@pytest.mark.integration
def test_a_training_chunk_that_raises_fails_the_job_and_producer_train_says_why(cluster, tmp_path):
    from tests.helpers.cluster import SIMULATED

    cluster.start("train", TASK_MAX_ERRORS="2", PYTHONPATH=SIMULATED, SIMULATE="raise-in:train")
    result = cluster.producer("train", f"s3://{cluster.bucket}/dataset", "--steps", "10", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "training job failed in chunk 0: ValueError: simulated: a bug in training" in result.stderr
