"""Where the calibrate and train tasks may write: a message can be crafted, so no run state, no
traversal, no local path outside the dataset, and only the artifact's own kind of file."""

from __future__ import annotations

import pytest

from workers.errors import ConfigError
from workers.training.calibrate import task_destination
from workers.training.destinations import check_task_output
from workers.training.job import TrainJob

REFUSED_CALIBRATIONS = {
    "s3://bucket/runs/r1/manifest.json": "under runs/",
    "s3://bucket/store/runs/r1/summary.json": "under runs/",
    "s3://bucket/data/../runs/r1/manifest.json": "'..'",
    "s3://bucket/data//calibration.json": "empty",
    "s3://bucket/data/calibration.txt": "must be a .json",
    "/etc/lowlight/calibration.json": "not on a worker's disk",
    "file:///srv/runs/r1/manifest.json": "not on a worker's disk",
}


@pytest.mark.parametrize(("location", "why"), REFUSED_CALIBRATIONS.items())
def test_the_calibrate_task_refuses_run_state_and_anything_but_a_calibration(location, why):
    with pytest.raises(ConfigError, match=why.replace(".", r"\.")):
        task_destination("s3://bucket/data", location)


def test_the_calibrate_task_writes_a_calibration_wherever_else_it_is_told():
    assert task_destination("s3://bucket/data", None) == "s3://bucket/data/calibration.json"
    assert task_destination("s3://bucket/data", "s3://other/calibrations/v2.json") == "s3://other/calibrations/v2.json"
    with pytest.raises(ConfigError, match="under runs/"):
        task_destination("s3://bucket/runs/r1", None)  # the default location of a dataset inside run state


def test_local_outputs_stay_inside_a_local_dataset(tmp_path):
    dataset = tmp_path / "data"
    (dataset / "sub").mkdir(parents=True)
    (dataset / "escape").symlink_to(tmp_path, target_is_directory=True)
    assert check_task_output(str(dataset / "sub" / "c.json"), str(dataset), ".json")
    assert check_task_output((dataset / "c.json").as_uri(), dataset.as_uri(), ".json")
    for outside, why in ((tmp_path / "runs" / "r1" / "manifest.json", "inside its dataset"),
                         (dataset / ".." / "c.json", "inside its dataset"),
                         (dataset / "escape" / "c.json", "inside its dataset"),
                         (dataset / "runs" / "r1" / "c.json", "under runs/")):
        with pytest.raises(ConfigError, match=why):
            check_task_output(str(outside), str(dataset), ".json")


@pytest.mark.parametrize(("output", "why"), [
    ("s3://bucket/runs/r1/trained_x4.safetensors", "under runs/"),
    ("s3://bucket/models/trained_x4.json", r"must be a \.safetensors"),
    ("s3://bucket/runs/r1/manifest.json", r"must be a \.safetensors"),
    ("/home/app/trained_x4.safetensors", "not on a worker's disk"),
])
def test_the_train_task_refuses_outputs_in_run_state_or_of_another_kind(output, why):
    with pytest.raises(ConfigError, match=why):
        TrainJob("s3://bucket/data", output).checked()


def test_the_train_task_accepts_its_default_and_other_model_locations():
    assert TrainJob("s3://bucket/data").checked().output_location() == "s3://bucket/data/trained_x4.safetensors"
    TrainJob("s3://bucket/data", "s3://bucket/models/v3.safetensors").checked()
    with pytest.raises(ConfigError, match="under runs/"):
        TrainJob("s3://bucket/runs/r1/input", "s3://bucket/models/v3.safetensors").checked()  # its calibration.json
