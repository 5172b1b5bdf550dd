"""producer.sources: what a source folder lists, with every entry a result (input or refusal)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from producer.embedded import run_embedded
from producer.planning import prepare_run
from producer.sources import resolve_source
from tests.helpers.images import noisy_image, png_bytes
from workers.io.storage import LocalStorage, StorageFactory
from workers.ops.denoise import DenoiseSpec
from workers.run.context import StageContext
from workers.run.keys import RunKeys
from workers.run.manifest import PipelineSpec
from workers.settings import Settings

BICUBIC = PipelineSpec(preset="quality", upscaler="bicubic", denoise=DenoiseSpec("none"))


def dataset_with_links(tmp_path: Path) -> Path:
    """A dataset root whose test/ holds a file, a dangling symlink, a looping one, and a symlink to a
    file kept outside the dataset (a shared cache)."""
    test = tmp_path / "ds" / "test"
    test.mkdir(parents=True)
    (test / "test_00001.png").write_bytes(png_bytes(noisy_image(32, 24, seed=1)))
    os.symlink("moved-away.png", test / "test_00002.png")
    os.symlink("test_00003.png", test / "test_00003.png")
    shared = tmp_path / "cache"
    shared.mkdir()
    (shared / "big.png").write_bytes(png_bytes(noisy_image(32, 24, seed=4)))
    os.symlink(shared / "big.png", test / "test_00004.png")
    return tmp_path / "ds"


def test_broken_symlinks_are_refused_with_a_reason_and_a_link_outside_the_folder_is_an_input(tmp_path):
    source = resolve_source(str(dataset_with_links(tmp_path)), StorageFactory(Settings()))
    assert source.names == ("test_00001.png", "test_00004.png")
    reasons = dict(source.rejected)
    assert set(reasons) == {"test_00002.png", "test_00003.png"}
    assert reasons["test_00002.png"] == "symbolic link to 'moved-away.png', which does not exist"
    assert reasons["test_00003.png"].startswith("symbolic link to 'test_00003.png' that cannot be followed")


def test_a_run_over_symlinked_inputs_writes_every_row_it_can_and_reports_the_broken_links(tmp_path):
    settings = Settings(storage_url=str(tmp_path / "store"), cpu_workers=1, io_threads=1)
    store = LocalStorage(tmp_path / "store")
    plan = prepare_run(settings, store, str(dataset_with_links(tmp_path)), BICUBIC)
    result = run_embedded(StageContext(settings, store), plan, show_progress=False)
    keys = RunKeys(plan.run_id)
    ids = [line.split(",", 1)[0] for line in store.get(keys.submission).decode().splitlines()[1:]]
    assert ids == ["gt_00001", "gt_00004"]
    failures = {f["name"]: f["stage"] for f in json.loads(store.get(keys.failures))}
    assert failures == {"test_00002.png": "listing", "test_00003.png": "listing"}
    assert (result.written, result.failed) == (2, 2)  # exit status 1: some inputs failed
