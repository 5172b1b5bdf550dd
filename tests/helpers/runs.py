"""Runs built directly in a store, and the producer started as a user starts it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from workers.io.storage import Storage, storage_url_for
from workers.run.manifest import PipelineSpec, RunManifest, save_manifest


def make_run(
    storage: Storage,
    folder: Path,
    names: list[str],
    run_id: str = "r1",
    pipeline: PipelineSpec | None = None,
    expected_columns: int | None = None,
) -> RunManifest:
    manifest = RunManifest(
        run_id, storage_url_for(folder), tuple(names), pipeline or PipelineSpec(), "file:test", expected_columns
    )
    save_manifest(storage, manifest)
    return manifest


def run_producer(*args: str, env: dict[str, str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``producer ARGS`` as a user runs it: a separate process."""
    return subprocess.run(
        [sys.executable, "-m", "producer", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
