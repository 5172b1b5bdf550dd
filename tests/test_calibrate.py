"""Training pairs and calibration: the forward model is recovered from pairs synthesised with known
values, the sample's own calibration matches how it was made, and val/ and test/ are never read."""

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers.paths import DATASET
from workers.errors import ConfigError
from workers.io.storage import LocalStorage
from workers.ops.degrade import ForwardModel
from workers.training.calibrate import Calibration, calibrate
from workers.training.pairs import training_pairs

LEVELS = np.arange(256)


def _png(path: Path, width: int, height: int, value: int = 50) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), value, np.uint8)).save(path)


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for k in (1, 2):
        _png(root / "train" / "train" / f"gt_{k}.png", 8, 4, 30)
        _png(root / "train" / "gt" / f"gt_{k}.png", 32, 16, 120)
    # Traps: same names and sizes, so only the path rules keep them out.
    for split, sub in (("val", "val"), ("val", "gt"), ("test", "test")):
        _png(root / split / sub / "gt_1.png", 8, 4)
        _png(root / split / sub / "trap.png", 8, 4)
    return root


_RECORDERS: list[list[str]] = []


def _record_open(event: str, args: tuple) -> None:
    if event == "open" and _RECORDERS and isinstance(args[0], str | bytes | Path):
        _RECORDERS[-1].append(str(args[0]))


sys.addaudithook(_record_open)  # one hook for the session (hooks cannot be removed); idle unless recording


@pytest.fixture
def opened_files():
    """Every file Python opens while the test runs (audit hooks see PIL, pathlib and io alike)."""
    opened: list[str] = []
    _RECORDERS.append(opened)
    yield opened
    _RECORDERS.remove(opened)


def test_fit_never_opens_val_or_test(tiny_dataset, opened_files):
    calibration = calibrate(LocalStorage(tiny_dataset))
    assert calibration.n_pairs == 2 and np.allclose(calibration.tone.lut[:, 30], 120)
    assert calibration.forward is None and calibration.tone_applies  # flat pairs: no noise to fit, the tone applies
    touched = [p for p in opened_files if str(tiny_dataset) in p]
    assert any("/train/train/" in p for p in touched)  # the hook does see our reads
    assert not [p for p in touched if "/val/" in p or "/test/" in p]


@pytest.mark.parametrize("inside", ["val", "val/val", "val/gt", "test", "test/test"])
def test_refuses_val_and_test_directories(tiny_dataset, inside, opened_files):
    target = tiny_dataset / inside
    target.mkdir(parents=True, exist_ok=True)
    with pytest.raises(ConfigError, match=r"refusing .* inside a (val|test)/ split"):
        calibrate(LocalStorage(target))
    assert not [p for p in opened_files if str(tiny_dataset) in p]


def test_refuses_a_train_split_that_links_into_val(tiny_dataset):

    shutil.rmtree(tiny_dataset / "train")
    (tiny_dataset / "train").mkdir()
    (tiny_dataset / "train" / "train").symlink_to(tiny_dataset / "val" / "val")
    (tiny_dataset / "train" / "gt").symlink_to(tiny_dataset / "val" / "gt")
    with pytest.raises(ConfigError, match="inside a val/ split"):
        training_pairs(LocalStorage(tiny_dataset))


def test_a_train_split_linking_outside_the_dataset_is_refused_by_storage(tiny_dataset, tmp_path):
    from workers.errors import InvalidKeyError

    linked = tmp_path / "linked"
    (linked / "train").mkdir(parents=True)
    (linked / "train" / "train").symlink_to(tiny_dataset / "val" / "val")
    with pytest.raises(InvalidKeyError, match="resolves outside"):
        training_pairs(LocalStorage(linked))


def test_bad_pairs_are_skipped_and_named(tiny_dataset):
    _png(tiny_dataset / "train" / "gt" / "gt_2.png", 31, 16)  # not 4x its 8x4 input
    _png(tiny_dataset / "train" / "train" / "gt_3.png", 8, 4)  # no target
    (tiny_dataset / "train" / "train" / "gt_4.png").write_bytes(b"not a png")
    _png(tiny_dataset / "train" / "gt" / "gt_4.png", 32, 16)
    calibration = calibrate(LocalStorage(tiny_dataset))
    assert calibration.n_pairs == 1
    reasons = dict(calibration.skipped)
    assert "not exactly 4x" in reasons["train/gt/gt_2.png"] and "no target" in reasons["train/train/gt_3.png"]
    assert "not a recognised image" in reasons["train/train/gt_4.png"]


def test_no_pair_left_and_missing_layout_are_errors(tiny_dataset, tmp_path):
    for k in (1, 2):
        (tiny_dataset / "train" / "gt" / f"gt_{k}.png").unlink()
    with pytest.raises(ConfigError, match=r"no training pairs .*gt_1\.png: no target"):
        training_pairs(LocalStorage(tiny_dataset))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="competition layout"):
        calibrate(LocalStorage(tmp_path / "empty"))


def test_names_hash_tracks_the_training_files(tiny_dataset):
    first = calibrate(LocalStorage(tiny_dataset))
    (tiny_dataset / "train" / "train" / "gt_2.png").rename(tiny_dataset / "train" / "train" / "gt_3.png")
    (tiny_dataset / "train" / "gt" / "gt_2.png").rename(tiny_dataset / "train" / "gt" / "gt_3.png")
    assert calibrate(LocalStorage(tiny_dataset)).names_sha256 != first.names_sha256


# --- the forward model -------------------------------------------------------------------------


def dark_crops(count: int, seed: int = 0) -> list[np.ndarray]:
    """256x160 crops of a scikit-image photo, each brought to a mean of 30-55 by a gamma curve."""
    from skimage import data

    photo, rng = data.astronaut(), np.random.default_rng(seed)
    crops = []
    for _ in range(count):
        y, x = int(rng.integers(0, 512 - 160)), int(rng.integers(0, 512 - 256))
        crop = photo[y : y + 160, x : x + 256].astype(np.float64) / 255
        gamma = np.log(rng.uniform(30, 55) / 255) / np.log(max(crop.mean(), 1e-3))
        crops.append(np.clip(np.rint(255 * crop**gamma), 0, 255).astype(np.uint8))
    return crops


def write_pairs(root: Path, targets: list[np.ndarray], make_input) -> Path:
    for k, target in enumerate(targets, 1):
        for folder, image in (("train/train", make_input(target, k)), ("train/gt", target)):
            path = root / folder / f"gt_{k:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(path)
    return root


@pytest.mark.parametrize("truth", [ForwardModel(2.49, 3.1, "box", "floor"), ForwardModel(1.6, 6.0, "bicubic", "round")],
                         ids=["competition", "other"])
def test_forward_model_is_recovered_from_pairs_made_with_it(tmp_path, truth):
    root = write_pairs(tmp_path, dark_crops(16), lambda t, k: truth.degrade(t, np.random.default_rng(k)))
    fit = calibrate(LocalStorage(root), candidates=(7.0,)).forward
    assert fit is not None and (fit.model.kernel, fit.model.quantisation) == (truth.kernel, truth.quantisation)
    assert fit.model.gain == pytest.approx(truth.gain, rel=0.04)
    assert fit.model.read_variance == pytest.approx(truth.read_variance, rel=0.08)
    assert not fit.tone_applies and fit.relative_mse_error < 0.03


@pytest.mark.slow
def test_the_sample_calibrates_to_the_values_it_was_made_with():
    """dataset/make_sample.py uses g = 2.49, sigma2 = 3.1, box, floor, equally dark targets."""
    calibration = calibrate(LocalStorage(DATASET))
    model = calibration.forward.model
    assert calibration.n_pairs == len(training_pairs(LocalStorage(DATASET)).pairs) >= 24
    assert (model.kernel, model.quantisation, calibration.tone_applies) == ("box", "floor", False)
    assert model.gain == pytest.approx(2.49, rel=0.04) and model.read_variance == pytest.approx(3.1, rel=0.1)
    assert calibration.curve is None and calibration.nlm_h in {h for h, _ in calibration.nlm_search}
    assert calibration.nlm_h == max(calibration.nlm_search, key=lambda item: item[1])[0]


def test_darkened_inputs_still_get_their_tone_curve(tmp_path):
    def darkened(target: np.ndarray, k: int) -> np.ndarray:
        low = target.reshape(40, 4, 64, 4, 3).mean(axis=(1, 3)) / 255
        noisy = np.random.default_rng(k).poisson(0.6 * low**1.3 * 60) / 60
        return np.clip(np.rint(255 * noisy), 0, 255).astype(np.uint8)

    calibration = calibrate(LocalStorage(write_pairs(tmp_path, dark_crops(6), darkened)), candidates=(5.0, 9.0))
    assert calibration.tone_applies and calibration.forward.brightness_ratio < 0.9
    assert (calibration.curve.lut[:, 20:60] > LEVELS[20:60]).all()  # the curve brightens the dark input


@pytest.mark.slow
def test_calibration_artifact_round_trips_and_reads_the_old_tone_curve(tmp_path):
    calibration = calibrate(LocalStorage(DATASET))
    back = Calibration.from_json(calibration.to_json())
    assert back.to_json() == calibration.to_json()
    legacy = Calibration.from_json(calibration.tone.to_json())  # an artifact written before the forward model
    assert legacy.forward is None and legacy.tone_applies and legacy.nlm_h == 7.0
    with pytest.raises(ConfigError, match="kind must be"):
        Calibration.from_json(b'{"kind": "something"}')
