"""The shipped-model registry: names to files, checked by hash; never a silent fallback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from workers.errors import ConfigError
from workers.io.models import REPOSITORY_MODELS, load_registry, models_folder
from workers.io.weights import file_sha256


def copy_registry(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    shutil.copytree(REPOSITORY_MODELS, folder)
    return folder


def test_the_repository_ships_a_default_model_whose_file_matches_its_hash():
    registry = load_registry(REPOSITORY_MODELS)
    path = registry.path(registry.default)
    entry = registry.entry(registry.default)
    assert file_sha256(path) == entry.sha256
    assert entry.macs_per_input_pixel > 0 and entry.architecture
    provenance = json.loads((REPOSITORY_MODELS / entry.provenance).read_text())
    assert provenance["photos"]["corpus_manifest_sha256"] or provenance.get("interim")
    assert provenance["calibration"]["forward_model"] == {"gain": 2.49, "read_variance": 3.1, "kernel": "box",
                                                          "quantisation": "floor"}


def test_a_tampered_model_file_is_refused_with_one_line(tmp_path):
    folder = copy_registry(tmp_path)
    registry = load_registry(folder)
    path = folder / registry.entry(registry.default).file
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="refusing to run a model that is not the one registered") as caught:
        registry.path(registry.default)
    assert "\n" not in str(caught.value)


def test_a_missing_model_file_or_registry_or_name_is_named(tmp_path):
    folder = copy_registry(tmp_path)
    registry = load_registry(folder)
    (folder / registry.entry(registry.default).file).unlink()
    with pytest.raises(ConfigError, match="is missing"):
        registry.path(registry.default)
    with pytest.raises(ConfigError, match="no shipped model 'nope'"):
        registry.path("nope")
    with pytest.raises(ConfigError, match="no model registry at"):
        load_registry(tmp_path / "elsewhere")
    (folder / "registry.json").write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable"):
        load_registry(folder)


def test_models_dir_overrides_the_repository_folder(tmp_path):
    assert models_folder("") == REPOSITORY_MODELS
    assert models_folder(str(tmp_path)) == tmp_path
