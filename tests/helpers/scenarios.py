"""Steps the fault and recovery scenarios share: start a run, wait for its summary, read its failures."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers.cluster import SIMULATED, Cluster, run_id_from, wait_until
from workers.run.keys import RunKeys


def count(cluster: Cluster, run_id: str, stage: str) -> int:
    return len(list(cluster.store().list(RunKeys(run_id).prefix(stage))))


def start_run(cluster: Cluster, folder: Path, tmp_path: Path, *args: str) -> str:
    result = cluster.producer("enqueue", str(folder), "--no-wait", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    return run_id_from(result.stdout)


def assert_complete_and_identical(cluster: Cluster, run_id: str, folder: Path, tmp_path: Path, *args: str) -> None:
    keys = RunKeys(run_id)
    submission = cluster.store().get(keys.submission).decode()
    ids = [line.split(",", 1)[0] for line in submission.splitlines()[1:]]
    assert len(ids) == len(set(ids)) == len(list(folder.iterdir())), ids
    assert json.loads(cluster.store().get(keys.failures)) == []
    assert submission == cluster.embedded_submission(str(folder), tmp_path, *args)


def with_faults(*faults: str) -> dict[str, str]:
    """Worker environment that switches on the named simulations."""
    return {"PYTHONPATH": SIMULATED, "SIMULATE": ",".join(faults)}


def summary_of(cluster: Cluster, run_id: str) -> dict | None:
    store, key = cluster.store(), RunKeys(run_id).summary
    return json.loads(store.get(key)) if store.exists(key) else None


def wait_for_summary(cluster: Cluster, run_id: str, timeout: float) -> dict:
    wait_until(lambda: summary_of(cluster, run_id) is not None, timeout, f"run {run_id} to aggregate")
    return summary_of(cluster, run_id)


def failures_of(cluster: Cluster, run_id: str) -> dict[str, str]:
    return {f["name"]: f["reason"] for f in json.loads(cluster.store().get(RunKeys(run_id).failures))}
