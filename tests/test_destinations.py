"""What a crafted calibrate or train message may make a worker do: anyone with the broker's password
can send one, so a task works only on a dataset inside the run store, writes only that dataset's own
model and calibration (or where TASK_OUTPUTS allows), and starts only from a shipped model, a run
store checkpoint by hash, or a source TRAIN_SOURCES lists; never TorchScript unless allowed."""

from __future__ import annotations

import pytest

from workers.errors import ConfigError
from workers.settings import Settings
from workers.training.artifacts import default_output
from workers.training.calibrate import task_destination
from workers.training.destinations import check_task_output
from workers.training.job import TrainJob

S3 = Settings(storage_url="s3://lowlight-sr")
ATTACKER, VICTIM = "s3://lowlight-sr/scratch", "s3://lowlight-sr/customer-a"
SHA = "ab" * 32


def test_a_job_on_one_dataset_never_writes_another_datasets_model_or_calibration():
    with pytest.raises(ConfigError, match="writes only 's3://lowlight-sr/scratch/trained_x4.safetensors'"):
        TrainJob(ATTACKER, default_output(VICTIM)).checked(S3)
    with pytest.raises(ConfigError, match="writes only 's3://lowlight-sr/scratch/calibration.json'"):
        task_destination(ATTACKER, f"{VICTIM}/calibration.json", S3)


def test_a_start_must_be_shipped_a_run_store_checkpoint_by_hash_or_allow_listed():
    with pytest.raises(ConfigError, match="TorchScript"):
        TrainJob(ATTACKER, None, "hf:attacker/evil/model.pt").checked(S3)
    with pytest.raises(ConfigError, match="listed in TRAIN_SOURCES"):
        TrainJob(VICTIM, None, "hf:attacker/evil/model.pth", {"steps": 1}).checked(S3)
    with pytest.raises(ConfigError, match="listed in TRAIN_SOURCES"):
        TrainJob(VICTIM, None, "/srv/models/start.pth").checked(S3)
    for start in (None, "shipped:lowlight-compact", f"checkpoint:{SHA}.safetensors", f"checkpoint:{SHA}.pth"):
        assert TrainJob(VICTIM, None, start).checked(S3).start == start
    allowed = Settings(storage_url="s3://lowlight-sr", train_sources="hf:org/repo/start.pth@v1, /srv/start.pth")
    assert TrainJob(VICTIM, None, "hf:org/repo/start.pth@v1").checked(allowed)
    assert TrainJob(VICTIM, None, "/srv/start.pth").checked(allowed)
    torchscript = Settings(storage_url="s3://lowlight-sr", train_sources="hf:org/repo/start.pt", allow_torchscript=True)
    assert TrainJob(VICTIM, None, "hf:org/repo/start.pt").checked(torchscript)


def test_a_task_works_only_on_a_dataset_inside_the_run_store(tmp_path):
    with pytest.raises(ConfigError, match="inside the run store"):
        TrainJob("/", "/srv/models/any.safetensors").checked(Settings(storage_url=str(tmp_path / "store")))
    with pytest.raises(ConfigError, match="inside the run store"):
        TrainJob("s3://another-bucket/data").checked(S3)
    with pytest.raises(ConfigError, match="inside the run store"):
        task_destination(str(tmp_path / "data"), None, S3)  # a worker's own disk for an S3 deployment
    local = Settings(storage_url=str(tmp_path))
    assert task_destination(str(tmp_path / "data"), None, local) == f"{tmp_path / 'data'}/calibration.json"


REFUSED_CALIBRATIONS = {
    "s3://lowlight-sr/runs/r1/manifest.json": "under runs/",
    "s3://lowlight-sr/data/../runs/r1/manifest.json": "'..'",
    "s3://lowlight-sr/data//calibration.json": "empty",
    "s3://lowlight-sr/data/calibration.txt": "must be a .json",
    "s3://lowlight-sr/data/v2.json": "writes only",
    "s3://other/calibrations/v2.json": "writes only",
}


@pytest.mark.parametrize(("location", "why"), REFUSED_CALIBRATIONS.items())
def test_the_calibrate_task_refuses_run_state_and_anything_but_its_calibration(location, why):
    with pytest.raises(ConfigError, match=why.replace(".", r"\.")):
        task_destination("s3://lowlight-sr/data", location, S3)


def test_task_outputs_allow_listed_by_configuration_are_accepted_but_never_run_state():
    settings = Settings(storage_url="s3://lowlight-sr", task_outputs="s3://lowlight-sr/calibrations")
    assert task_destination("s3://lowlight-sr/data", None, S3) == "s3://lowlight-sr/data/calibration.json"
    assert task_destination("s3://lowlight-sr/data", "s3://lowlight-sr/calibrations/v2.json", settings)
    with pytest.raises(ConfigError, match="under runs/"):
        task_destination("s3://lowlight-sr/data", "s3://lowlight-sr/calibrations/runs/x.json", settings)
    with pytest.raises(ConfigError, match="under runs/"):
        task_destination("s3://lowlight-sr/runs/r1", None, S3)  # the default location of a dataset in run state


def test_local_outputs_stay_inside_a_local_dataset(tmp_path):
    settings = Settings(storage_url=str(tmp_path))
    dataset = tmp_path / "data"
    (dataset / "sub").mkdir(parents=True)
    (dataset / "escape").symlink_to(tmp_path, target_is_directory=True)
    assert check_task_output(str(dataset / "calibration.json"), str(dataset), "calibration.json", settings)
    assert check_task_output((dataset / "calibration.json").as_uri(), dataset.as_uri(), "calibration.json", settings)
    for outside, why in ((tmp_path / "runs" / "r1" / "calibration.json", "under runs/"),
                         (dataset / ".." / "calibration.json", "'..'"),
                         (dataset / "escape" / "calibration.json", "writes only"),
                         (dataset / "sub" / "calibration.json", "writes only")):
        with pytest.raises(ConfigError, match=why):
            check_task_output(str(outside), str(dataset), "calibration.json", settings)


@pytest.mark.parametrize(("output", "why"), [
    ("s3://lowlight-sr/runs/r1/trained_x4.safetensors", "under runs/"),
    ("s3://lowlight-sr/models/trained_x4.json", r"must be a \.safetensors"),
    ("s3://lowlight-sr/models/v3.safetensors", "writes only"),
])
def test_the_train_task_refuses_outputs_in_run_state_or_of_another_kind(output, why):
    with pytest.raises(ConfigError, match=why):
        TrainJob("s3://lowlight-sr/data", output).checked(S3)


def test_the_train_task_accepts_its_default_and_allow_listed_model_locations():
    assert TrainJob("s3://lowlight-sr/data").checked(S3).output_location() == \
        "s3://lowlight-sr/data/trained_x4.safetensors"
    settings = Settings(storage_url="s3://lowlight-sr", task_outputs="s3://lowlight-sr/models")
    TrainJob("s3://lowlight-sr/data", "s3://lowlight-sr/models/v3.safetensors").checked(settings)
