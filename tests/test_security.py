"""Hostile messages and keys: pickle is refused, bad arguments fail alone, keys cannot escape."""

from __future__ import annotations

import pickle
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.helpers.cluster import Cluster, wait_until
from tests.helpers.paths import DATASET, REPO
from workers.errors import InvalidKeyError
from workers.run.keys import RunKeys, check_run_id
from workers.runtime.app import create_app
from workers.settings import Settings


class _Exploit:
    """Unpickling this would create a file: proof that a pickled message ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("name", ["../escape.png", "..", "/etc/passwd", "a/../../b.png", "sub/dir.png", "nul\x00.png"])
def test_image_names_cannot_leave_the_run_prefix(name):
    with pytest.raises(InvalidKeyError):
        RunKeys("run1").denoised(name)


@pytest.mark.parametrize("run_id", ["../other", "a/b", "", ".hidden", "x" * 200])
def test_run_ids_cannot_leave_runs(run_id):
    with pytest.raises(InvalidKeyError):
        check_run_id(run_id)


def ping(cluster: Cluster, worker_name: str) -> str:
    return subprocess.run([sys.executable, "-m", "celery", "-A", "workers", "inspect", "ping", "-d", worker_name],
                          env=cluster.env, cwd=REPO, capture_output=True, text=True, timeout=60).stdout


@pytest.mark.integration
def test_pickled_message_is_refused_and_never_unpickled(cluster, tmp_path):
    worker = cluster.start("cpu", concurrency=1)
    marker = tmp_path / "pwned"
    app = create_app(Settings.from_env(cluster.env))
    task_id = str(uuid.uuid4())
    with app.producer_or_acquire() as producer:
        producer.publish(
            pickle.dumps(((_Exploit(marker),), {}, {})),
            content_type="application/x-python-serialize", content_encoding="binary",
            exchange="cpu", routing_key="cpu",
            headers={"lang": "py", "task": "workers.tasks.denoise", "id": task_id, "root_id": task_id},
        )
    wait_until(lambda: "untrusted content" in worker.log.read_text(), 60, "the worker to refuse the message")
    assert not marker.exists()
    assert "pong" in ping(cluster, worker.name)
    assert cluster.redis_client().llen("cpu") == 0  # refused and removed, not redelivered forever


@pytest.mark.integration
def test_unexpected_arguments_and_escaping_names_fail_alone(cluster, tmp_path):
    worker = cluster.start("cpu", concurrency=1)
    app = create_app(Settings.from_env(cluster.env))
    app.send_task("workers.tasks.denoise", ("run1", "a.png", "surprise"))
    app.send_task("workers.tasks.denoise", ("../../outside", "x.png"))
    app.send_task("workers.tasks.denoise", ("run1", "../../../etc/passwd"))
    log = worker.log

    def all_failed() -> bool:
        text = log.read_text()
        return text.count("raised unexpected") + text.count("InvalidKeyError") >= 3

    wait_until(all_failed, 60, "the three tasks to fail")
    assert "pong" in ping(cluster, worker.name)
    assert list(cluster.store().list("")) == []  # nothing written anywhere


@pytest.mark.integration
def test_a_calibrate_message_cannot_overwrite_run_state(cluster, tmp_path):
    """The calibrate task wrote wherever its message said: a crafted one replaced a run's manifest, or
    another dataset's calibration (which that dataset's runs then use)."""
    worker = cluster.start("cpu", concurrency=1)
    store = cluster.store()
    for pair in ("train/train", "train/gt"):
        for path in sorted((DATASET / pair).iterdir())[:4]:
            store.put(f"data/{pair}/{path.name}", path.read_bytes())
    store.put("runs/r1/manifest.json", b'{"the": "manifest"}')
    local_state = tmp_path / "runs" / "r1" / "manifest.json"
    local_state.parent.mkdir(parents=True)
    local_state.write_bytes(b"local manifest")
    app = create_app(Settings.from_env(cluster.env))
    dataset = f"s3://{cluster.bucket}/data"
    # Outcomes are read from storage and the worker's log: no result to outlive the servers.
    store.put("other/calibration.json", b"theirs")
    for target in (f"s3://{cluster.bucket}/runs/r1/manifest.json", str(local_state),
                   f"s3://{cluster.bucket}/other/calibration.json", None):
        app.send_task("workers.tasks.calibrate", (dataset, target), ignore_result=True)
    wait_until(lambda: store.exists("data/calibration.json"), 300, "the allowed calibration")
    assert store.get("runs/r1/manifest.json") == b'{"the": "manifest"}'
    assert local_state.read_bytes() == b"local manifest"
    assert store.get("other/calibration.json") == b"theirs"
    log = worker.log.read_text()
    assert "is under runs/, where runs keep their state" in log and f"writes only '{dataset}/calibration.json'" in log
