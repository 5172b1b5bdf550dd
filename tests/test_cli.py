"""The producer command in embedded mode, run as users run it: a subprocess."""

import json
import os
import re
from pathlib import Path

import pytest

from tests.helpers.images import BAD, GOOD, write_hostile_folder, write_images
from tests.helpers.paths import DATASET
from tests.helpers.runs import run_producer as producer


@pytest.fixture
def env(tmp_path):
    clean = {k: v for k, v in os.environ.items() if k not in {"BROKER_URL", "STORAGE_URL", "WEIGHTS"}}
    return {**clean, "STORAGE_URL": str(tmp_path / "store"), "DEVICE": "cpu"}


@pytest.fixture
def hub_env(env, weights_path):
    """For the presets that run the seed's Real-ESRGAN: its offline stand-in (no Hub here)."""
    return {**env, "WEIGHTS": str(weights_path)}


def run_dir(tmp_path: Path) -> Path:
    (run,) = (tmp_path / "store" / "runs").iterdir()
    return run


@pytest.mark.slow
def test_demo_on_the_sample_dataset_matches_the_sample_submission_and_resumes(tmp_path, env):
    first = producer("enqueue", str(DATASET), env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    run = run_dir(tmp_path)
    submission = (run / "submission.csv").read_text().splitlines()
    sample = (DATASET / "sample_submission.csv").read_text().splitlines()
    assert submission[0] == sample[0]
    assert [r.split(",", 1)[0] for r in submission[1:]] == [r.split(",", 1)[0] for r in sample[1:]]
    assert all(r.count(",") == sample[0].count(",") for r in submission)
    assert len(list((run / "sr").glob("*.png"))) == 8
    stamps = {p.name: p.stat().st_mtime_ns for p in (run / "sr").iterdir()}

    again = producer("enqueue", str(DATASET), env=env, cwd=tmp_path)
    assert again.returncode == 0 and "8 already finished" in again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in (run / "sr").iterdir()} == stamps
    assert (run / "submission.csv").read_text().splitlines() == submission

    out = tmp_path / "collected.csv"
    collected = producer("collect", run.name, "-o", str(out), env=env, cwd=tmp_path)
    assert collected.returncode == 0 and out.read_text().splitlines() == submission


@pytest.mark.slow
def test_hostile_folder_every_file_gets_a_result_and_the_rest_complete(tmp_path, env):
    folder = write_hostile_folder(tmp_path / "photos")
    result = producer("enqueue", str(folder), env=env, cwd=tmp_path)
    assert result.returncode == 1, result.stderr  # some images failed
    run = run_dir(tmp_path)
    failures = {f["name"]: f["reason"] for f in json.loads((run / "failures.json").read_text())}
    assert set(failures) == set(BAD)
    for name, expected in BAD.items():
        assert expected in failures[name], (name, failures[name])
    rows = (run / "submission.csv").read_text().splitlines()[1:]
    assert len(rows) == len(GOOD)

    status = producer("status", run.name, env=env, cwd=tmp_path)
    assert "4 rows, 6 failed" in status.stdout
    assert "(upscale) test_00006_empty.png: empty file" in status.stdout  # the default pipeline starts there


@pytest.mark.slow
def test_a_fixed_file_is_redone_and_retry_failed_reprocesses_unchanged_ones(tmp_path, env):
    """A failure belongs to the bytes that failed: a fixed file (other bytes) is redone by the next enqueue;
    a failure of unchanged bytes stays until --retry-failed (e.g. after raising a limit)."""
    folder = tmp_path / "photos"
    write_images(folder, 1)
    (folder / "test_00002.png").write_bytes(b"")
    assert producer("enqueue", str(folder), env=env, cwd=tmp_path).returncode == 1
    assert producer("enqueue", str(folder), env=env, cwd=tmp_path).returncode == 1  # still recorded as failed
    write_images(folder, 2)  # the broken file is now a real image
    fixed = producer("enqueue", str(folder), env=env, cwd=tmp_path)
    assert fixed.returncode == 0 and "1 already finished" in fixed.stdout, fixed.stdout + fixed.stderr

    small = {**env, "MAX_IMAGE_PIXELS": "100"}  # 32x24 inputs are now too large: failures of unchanged files
    write_images(tmp_path / "more", 1)
    assert producer("enqueue", str(tmp_path / "more"), env=small, cwd=tmp_path).returncode == 1
    assert producer("enqueue", str(tmp_path / "more"), env=env, cwd=tmp_path).returncode == 1
    retried = producer("enqueue", str(tmp_path / "more"), "--retry-failed", env=env, cwd=tmp_path)
    assert retried.returncode == 0, retried.stdout + retried.stderr


def test_missing_weights_is_one_line_not_a_traceback(tmp_path, env):
    write_images(tmp_path / "photos", 1)
    result = producer("enqueue", str(tmp_path / "photos"), "--preset", "standard",
                      env={**env, "WEIGHTS": "/nowhere/model.pth"}, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "no model file at /nowhere/model.pth (--weights / WEIGHTS)" in result.stderr


def test_missing_source_is_a_clear_error(tmp_path, env):
    result = producer("enqueue", str(tmp_path / "nope"), env=env, cwd=tmp_path)
    assert result.returncode == 2 and "not a directory" in result.stderr


def psnr_of(table: str, label: str) -> float:
    (row,) = [line for line in table.splitlines() if line.startswith(f"| {label}")]
    return float(row.split("|")[2])


@pytest.mark.slow
def test_calibrate_then_quality_preset_beats_the_seed(tmp_path, hub_env):
    env = hub_env
    curve = tmp_path / "calibration.json"
    fitted = producer("calibrate", str(DATASET), "-o", str(curve), env=env, cwd=tmp_path)
    assert fitted.returncode == 0, fitted.stderr
    assert "calibrated on 42 pairs" in fitted.stdout and curve.is_file()
    assert re.search(r"forward model: box 4x downscale, gain 2\.(4[5-9]|5[0-3])\d, read variance [23]\.\d+, floor",
                     fitted.stdout) and "no tone stage" in fitted.stdout
    result = producer("evaluate", str(DATASET), "--preset", "seed", "--preset", "quality",
                      "--calibration", str(curve), env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    table = result.stdout
    assert "missing" not in table
    for baseline in ("bicubic x4", "NL-means h=7 + bicubic x4"):
        assert f"| {baseline}" in table
    assert "tone + bicubic" not in table  # the sample's inputs are as dark as their targets
    assert psnr_of(table, "quality") > psnr_of(table, "seed") + 1


def test_calibrate_refuses_the_validation_split(tmp_path, env):
    result = producer("calibrate", str(DATASET / "val"), "-o", str(tmp_path / "c.json"), env=env, cwd=tmp_path)
    assert result.returncode == 2 and "refusing" in result.stderr and not (tmp_path / "c.json").exists()


def test_quality_preset_without_a_calibration_says_how_to_make_one(tmp_path, env):
    write_images(tmp_path / "photos", 1)
    result = producer("enqueue", str(tmp_path / "photos"), "--preset", "quality", env=env, cwd=tmp_path)
    assert result.returncode == 2 and "producer calibrate" in result.stderr


def test_help_shows_the_commands_own_options_first_and_every_setting_with_help_all(tmp_path, env):
    result = producer("enqueue", "--help", env={**env, "COLUMNS": "80"}, cwd=tmp_path)
    assert result.returncode == 0
    text = result.stdout
    assert len(text.splitlines()) < 60, text
    assert text.index("--preset") < text.index("Deployment settings") < text.index("--broker-url")
    flat = " ".join(text.split())  # help lines wrap anywhere
    for variable in ("PRESET", "TTA", "DENOISE_ON", "RUN_ID", "BROKER_URL"):
        assert f"env var: {variable}" in flat, variable
    assert "--gpu-batch-size" not in text and "--help-all" in text
    everything = producer("enqueue", "--help-all", env=env, cwd=tmp_path).stdout
    assert "--gpu-batch-size" in everything and "GPU_BATCH_SIZE" in everything and "--aws-secret-access-key" not in everything
    train = producer("train", "--help", env=env, cwd=tmp_path).stdout
    assert "TRAIN_MINUTES" in train and "TRAIN_SEED" in train  # options that read a variable say which


@pytest.mark.slow
def test_version_runs_and_a_run_that_does_not_exist(tmp_path, env):
    version = producer("--version", env=env, cwd=tmp_path)
    assert version.returncode == 0 and re.fullmatch(r"producer \(lowlight-sr\) \S+\n", version.stdout)
    assert "no runs in" in producer("runs", env=env, cwd=tmp_path).stdout
    write_images(tmp_path / "photos", 1)
    assert producer("enqueue", str(tmp_path / "photos"), env=env, cwd=tmp_path).returncode == 0
    listed = producer("runs", env=env, cwd=tmp_path).stdout.splitlines()
    assert listed[0].split() == ["RUN", "PRESET", "STATE", "DONE", "FAILED", "TOTAL", "AGE", "SOURCE"]
    run_id, preset, state, done, failed, total = listed[1].split()[:6]
    assert (run_id, preset, state, done, failed, total) == (run_dir(tmp_path).name, "learned", "complete", "1", "0", "1")
    missing = producer("collect", "nosuch", env=env, cwd=tmp_path)
    assert missing.returncode == 2 and "no run 'nosuch'" in missing.stderr and "producer runs" in missing.stderr


@pytest.mark.slow
def test_bicubic_preset_never_loads_or_downloads_a_model(tmp_path, env):
    """`quality` upscales with bicubic: no weights (and offline, no Hub) needed; WEIGHTS does not change its run."""
    curve = tmp_path / "calibration.json"
    assert producer("calibrate", str(DATASET), "-o", str(curve), env=env, cwd=tmp_path).returncode == 0
    write_images(tmp_path / "photos", 2)
    args = ("enqueue", str(tmp_path / "photos"), "--preset", "quality", "--calibration", str(curve))
    no_model = {**env, "WEIGHTS": "", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty-hf")}
    result = producer(*args, env=no_model, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run = run_dir(tmp_path)
    assert len(list((run / "sr").glob("*.png"))) == 2
    again = producer(*args, env={**env, "WEIGHTS": "/another/model.pth"}, cwd=tmp_path)
    assert again.returncode == 0 and run_dir(tmp_path) == run  # same run, resumed: nothing to redo
    assert "--weights / WEIGHTS ignored: preset quality runs no model" in again.stdout  # said, never opened


@pytest.mark.slow
def test_names_too_long_or_not_utf8_are_recorded_failures_and_the_run_completes(tmp_path, env):
    """Stems of 243+ bytes overflowed meta/<stem>.upscale.json (ENAMETOOLONG), 251+ even failed/<stem>.json;
    a name that is not UTF-8 broke the submission: each is now one failure, named readably, up front."""
    folder = tmp_path / "photos"
    write_images(folder, 1)
    image = (folder / "test_00001.png").read_bytes()
    long_meta, long_failed = "a" * 243 + ".png", "b" * 251 + ".png"  # 247 and 255 bytes: the filesystem holds both
    for name in (long_meta, long_failed):
        (folder / name).write_bytes(image)
    with open(os.path.join(os.fsencode(folder), b"test_\xff.png"), "wb") as f:
        f.write(image)

    result = producer("enqueue", str(folder), env=env, cwd=tmp_path)
    assert result.returncode == 1, result.stderr  # some images failed, none stranded
    assert "Traceback" not in result.stderr
    run = run_dir(tmp_path)
    failures = {f["name"]: f for f in json.loads((run / "failures.json").read_text())}
    assert set(failures) == {long_meta, long_failed, "test_\\xff.png"}
    assert all(f["stage"] == "listing" for f in failures.values())
    assert "too long" in failures[long_meta]["reason"] and "255 bytes" in failures[long_meta]["reason"]
    assert "not valid UTF-8" in failures["test_\\xff.png"]["reason"]
    assert len((run / "submission.csv").read_text().splitlines()) == 2  # header + the good image
    assert "test_\\xff.png" in (run / "report.html").read_text()
    status = producer("status", run.name, env=env, cwd=tmp_path)
    assert "1 rows, 3 failed" in status.stdout and "(listing) test_\\xff.png: input name" in status.stdout


def test_inputs_sharing_a_submission_id_refuse_the_enqueue_naming_both(tmp_path, env):
    """test_1.png and gt_1.png both become gt_1: two rows with one ID is a broken submission."""
    folder = tmp_path / "photos"
    write_images(folder, 1, prefix="gt_")
    write_images(folder, 1, prefix="test_")
    result = producer("enqueue", str(folder), env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "'gt_00001.png' and 'test_00001.png' both have submission ID 'gt_00001'" in result.stderr
    assert not (tmp_path / "store" / "runs").exists()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["flag", "variable"])
def test_naming_nl_means_runs_it_even_at_the_default_strength(tmp_path, env, how):
    """The default preset has no denoiser: `--denoise nlm` (or DENOISE=nlm) adds the seed's NL-means."""
    write_images(tmp_path / "photos", 1)
    args, extra = (["--denoise", "nlm"], {}) if how == "flag" else ([], {"DENOISE": "nlm"})
    result = producer("enqueue", str(tmp_path / "photos"), *args, env={**env, **extra}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((run_dir(tmp_path) / "manifest.json").read_text())
    assert manifest["pipeline"]["denoise"]["method"] == "nlm", manifest["pipeline"]
    assert (run_dir(tmp_path) / "denoised" / "test_00001.png").is_file()


@pytest.mark.slow
def test_an_output_the_user_cannot_write_is_one_line_naming_it(tmp_path, env):
    write_images(tmp_path / "photos", 1)
    result = producer("enqueue", str(tmp_path / "photos"), env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # /sys refuses new files even to root (CI runs as root): as a container's read-only mount does.
    collected = producer("collect", run_dir(tmp_path).name, "-o", "/sys/submission.csv", env=env, cwd=tmp_path)
    assert collected.returncode == 2 and "Traceback" not in collected.stderr
    assert "Permission denied: /sys/submission.csv" in collected.stderr and "runs as uid" in collected.stderr


@pytest.mark.slow
def test_weights_name_the_checkpoint_any_preset_runs(tmp_path, env, weights_path):
    """WEIGHTS and --weights are one setting: the checkpoint this run runs (here the default preset),
    published into the run store by hash; the run's id and manifest name it."""
    photos = str(tmp_path / "photos")
    write_images(tmp_path / "photos", 1)
    shipped = producer("enqueue", photos, env=env, cwd=tmp_path)
    assert shipped.returncode == 0, shipped.stderr
    by_variable = producer("enqueue", photos, env={**env, "WEIGHTS": str(weights_path)}, cwd=tmp_path)
    assert by_variable.returncode == 0, by_variable.stderr
    assert "(--weights / WEIGHTS)" in by_variable.stdout and "0 already finished" in by_variable.stdout  # a run of its own
    by_flag = producer("enqueue", photos, "--weights", str(weights_path), env=env, cwd=tmp_path)
    assert by_flag.returncode == 0 and "1 already finished" in by_flag.stdout  # the variable's run, resumed
    manifests = [json.loads((run / "manifest.json").read_text()) for run in (tmp_path / "store" / "runs").iterdir()]
    assert len(manifests) == 2 and manifests[0]["model"] != manifests[1]["model"]
    assert all(m["model"] == f"run:{m['pipeline']['checkpoint']}" for m in manifests)


@pytest.mark.slow
def test_the_summary_names_each_failed_image_with_its_reason_refusals_at_listing_included(tmp_path, env):
    folder = tmp_path / "photos"
    write_images(folder, 3)
    (folder / "test_00001.png").rename(folder / "a.png")
    (folder / "test_00002.png").rename(folder / "a.jpg")  # same stem: one of the two is refused at listing
    (folder / "x.png").write_text("a text file, whatever its name says")
    good = (folder / "test_00003.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    result = producer("enqueue", str(folder), env=env, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    summary = result.stdout[result.stdout.index("failed (3):"):]
    for name, reason in (("x.png", "not a recognised image"), ("truncated.png", "truncated"),
                         ("a.png", "same output name as 'a.jpg'")):
        assert re.search(rf"^  {re.escape(name)}: .*{re.escape(reason)}", summary, re.MULTILINE), summary
    assert re.findall(r"failed=(\d+)", result.stderr)[-1] == "3"  # the bar's count is the summary's
    assert "WARNING: " in result.stderr and " workers.run.stages:" not in result.stderr  # plain log lines


@pytest.mark.slow
def test_a_weights_file_that_is_no_model_is_named_as_given_and_leaves_nothing_behind(tmp_path, env):
    (tmp_path / "notamodel.pth").write_bytes(b"not a checkpoint at all")
    home = tmp_path / "home"
    here = {**{k: v for k, v in env.items() if k != "STORAGE_URL"}, "HOME": str(home)}  # the store is ./
    result = producer("enqueue", str(DATASET), "--weights", "notamodel.pth", env=here, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: notamodel.pth: not a checkpoint spandrel can load"), result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notamodel.pth"]  # no runs/, no checkpoints/, no home cache
