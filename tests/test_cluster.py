"""`make cluster` (testbed/cluster.py): up, a distributed run through it, then Ctrl-C takes it all down."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.helpers.cluster import wait_until
from tests.helpers.paths import DATASET, REPO
from tests.helpers.runs import run_producer

pytestmark = pytest.mark.integration


def test_the_dev_cluster_runs_the_sample_distributed_and_stops_cleanly_on_ctrl_c(tmp_path):
    env_file = tmp_path / "cluster.env"
    clean = {k: v for k, v in os.environ.items() if k not in {"BROKER_URL", "STORAGE_URL"}}
    cluster = subprocess.Popen(
        [sys.executable, "-m", "testbed.cluster", "--env-file", str(env_file)],
        cwd=REPO,
        env=clean,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(cluster.stdout), daemon=True).start()
    try:
        wait_until(
            lambda: any("Ctrl-C here stops everything" in line for line in lines) or cluster.poll() is not None,
            180,
            "the cluster to be ready",
        )
        assert cluster.poll() is None, "".join(lines)
        assert oct(env_file.stat().st_mode & 0o777) == "0o600"
        exported = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
        assert exported["BROKER_URL"].startswith("redis://127.0.0.1:") and exported["STORAGE_URL"] == "s3://lowlight-sr"
        result = run_producer("enqueue", str(DATASET), env={**clean, **exported}, cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "enqueued run" in result.stdout and "8 rows written, 0 failed" in result.stdout

        cluster.send_signal(signal.SIGINT)
        assert cluster.wait(120) == 0, "".join(lines)
    finally:
        if cluster.poll() is None:
            os.killpg(cluster.pid, signal.SIGKILL)
    time.sleep(0.5)
    assert "stopped" in "".join(lines) and not env_file.exists()
    (workers,) = [line.split(None, 1)[1].strip() for line in lines if line.strip().startswith("workers ")]
    for pattern in ["lowlight-cluster-", *workers.split(", ")]:  # servers by their data folder, workers by name
        survivors = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
        assert not survivors, f"{pattern}: processes left behind: {survivors}"
