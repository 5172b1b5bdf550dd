"""workers.run.aggregate: the submission is checked against sample_submission.csv, IDs and columns."""

from __future__ import annotations

import json

from producer.embedded import run_embedded
from producer.planning import prepare_run
from tests.helpers.images import noisy_image, png_bytes
from workers.io.storage import LocalStorage
from workers.ops.denoise import DenoiseSpec
from workers.run.context import StageContext
from workers.run.keys import RunKeys
from workers.run.manifest import PipelineSpec
from workers.settings import Settings

BICUBIC = PipelineSpec(preset="quality", upscaler="bicubic", denoise=DenoiseSpec("none"))


def test_an_id_no_input_has_and_an_input_the_sample_does_not_list_are_both_failures(tmp_path):
    """test_00003 went missing from test/ and test_00009 is not the competition's: both are reported,
    the submission holds only the IDs the sample lists, and the run counts failures (exit status 1)."""
    test = tmp_path / "ds" / "test"
    test.mkdir(parents=True)
    for i in (1, 2, 9):
        (test / f"test_{i:05d}.png").write_bytes(png_bytes(noisy_image(32, 24, seed=i)))
    columns = (32 * 4) * (24 * 4) // 8
    header = "ID," + ",".join(f"pixel_{i}" for i in range(columns))
    rows = [f"gt_{i:05d}," + ",".join(["0"] * columns) for i in (1, 2, 3)]
    (tmp_path / "ds" / "sample_submission.csv").write_text("\n".join([header, *rows]) + "\n")
    settings = Settings(storage_url=str(tmp_path / "store"), cpu_workers=1, io_threads=1)
    store = LocalStorage(tmp_path / "store")
    plan = prepare_run(settings, store, str(tmp_path / "ds"), BICUBIC)
    result = run_embedded(StageContext(settings, store), plan, show_progress=False)
    keys = RunKeys(plan.run_id)
    ids = [line.split(",", 1)[0] for line in store.get(keys.submission).decode().splitlines()[1:]]
    assert ids == ["gt_00001", "gt_00002"]
    failures = {f["name"]: f["reason"] for f in json.loads(store.get(keys.failures))}
    assert set(failures) == {"test_00009.png", "gt_00003"}
    assert "'gt_00009' is not in sample_submission.csv" in failures["test_00009.png"]
    assert "lists this ID, but no input has it" in failures["gt_00003"]
    assert store.exists(keys.sr("test_00009.png"))  # its output is kept
    assert (result.written, result.failed, result.pending) == (2, 2, 0)
