"""Weights resolution. The Hub cannot be reached here: the Hub path is tested against a pre-filled
HF cache with HF_HUB_OFFLINE=1 (in a subprocess, since huggingface_hub reads that at import)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from workers.errors import WeightsUnavailableError
from workers.io.weights import describe_weights, file_sha256, resolve_weights
from workers.settings import DEFAULT_MODEL_FILE, DEFAULT_MODEL_REPO, Settings

COMMIT = "0123456789abcdef0123456789abcdef01234567"
RESOLVE = "from workers.settings import Settings; from workers.io.weights import resolve_weights; print(resolve_weights(Settings.from_env()).path)"


def fill_hf_cache(cache: Path, weights: Path) -> Path:
    """Lay out ``weights`` as huggingface_hub caches a downloaded file of the default repo."""
    repo = cache / ("models--" + DEFAULT_MODEL_REPO.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    target = snapshot / DEFAULT_MODEL_FILE
    target.symlink_to(weights)
    return target


def run_resolve(cache: Path, **extra_env: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {"WEIGHTS", "HF_HOME"}}
    env.update(HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", **extra_env)
    return subprocess.run([sys.executable, "-c", RESOLVE], env=env, capture_output=True, text=True, timeout=120)


def test_hub_default_resolves_from_a_prefilled_cache_offline_hub_mocked_by_cache(tmp_path, weights_path):
    expected = fill_hf_cache(tmp_path / "hub", weights_path)
    result = run_resolve(tmp_path / "hub")
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == expected


def test_hub_offline_without_cache_is_one_clear_error(tmp_path):
    result = run_resolve(tmp_path / "empty-hub")
    assert result.returncode != 0
    assert "WEIGHTS=" in result.stderr and "--weights" in result.stderr
    assert "not in the HF cache" in result.stderr and "HF_HUB_OFFLINE" in result.stderr


def test_hub_bad_repo_id_names_the_setting(tmp_path):
    result = run_resolve(tmp_path / "empty-hub", MODEL_REPO="not a/valid//repo")
    assert result.returncode != 0
    assert "MODEL_REPO" in result.stderr and "WEIGHTS=" in result.stderr


def test_local_weights_path(weights_path):
    ref = resolve_weights(Settings(weights=str(weights_path)))
    assert ref.path == weights_path.resolve() and ref.source == f"file:{weights_path.resolve()}"


def test_missing_local_weights_names_the_setting(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="WEIGHTS=.*--weights"):
        resolve_weights(Settings(weights=str(tmp_path / "nope.pth")))


def test_describe_default_names_the_hub_file():
    assert describe_weights(Settings()) == f"hf:{DEFAULT_MODEL_REPO}/{DEFAULT_MODEL_FILE}@main"


def test_file_sha256(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    assert file_sha256(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
