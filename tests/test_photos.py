"""Learning from clean photos: batches, brightness, bad photos, photo-only training, keeping a better start."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers.models import make_random_compact
from tests.helpers.training import settings, textured_photo, write_dataset, write_photos
from workers.errors import ConfigError, PermanentImageError
from workers.io.storage import LocalStorage, StorageFactory
from workers.ops.degrade import COMPETITION_BRIGHTNESS, BrightnessDistribution, ForwardModel
from workers.training.batches import BatchSource, make_batch
from workers.training.config import TrainConfig
from workers.training.forward_fit import ForwardAccumulator
from workers.training.job import run_training
from workers.training.photos import PhotoCache, box_downscale, list_photos, photo_pair, prepare_photo
from workers.training.setup import make_trainer


@pytest.fixture(scope="module")
def small_compact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_random_compact(tmp_path_factory.mktemp("small") / "compact.pth")


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    return write_photos(tmp_path / "photos")


def photo_source(folder: Path, crop: int = 8) -> BatchSource:
    listing = list_photos(LocalStorage(folder), str(folder))
    cache = PhotoCache(listing, range(len(listing.keys)), 4 * crop, 1 << 30)
    return BatchSource(ForwardModel(), COMPETITION_BRIGHTNESS, photos=cache)


def test_batches_from_photos_repeat_for_a_seed_and_differ_between_steps(photos):
    source = photo_source(photos)
    config = TrainConfig(batch=4, crop=8)
    first, again, second = make_batch(source, config, 0), make_batch(source, config, 0), make_batch(source, config, 1)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert not np.array_equal(first[0], second[0])
    assert not np.array_equal(first[0], make_batch(source, TrainConfig(batch=4, crop=8, seed=1), 0)[0])
    assert first[0].shape == (4, 8, 8, 3) and first[1].shape == (4, 32, 32, 3)


def test_pairs_and_photos_mix_at_the_configured_share(tmp_path, photos):
    from workers.training.batches import PairCache
    from workers.training.pairs import training_pairs

    data = write_dataset(tmp_path / "data")
    pairs = training_pairs(LocalStorage(data)).pairs
    source = photo_source(photos)
    source.pairs, source.pair_indices = PairCache(LocalStorage(data), pairs, 1 << 30), range(len(pairs))
    assert source.photo_crops(TrainConfig(batch=8, photo_share=0.25)) == 2
    assert source.photo_crops(TrainConfig(batch=8, photo_share=0.0)) == 0
    assert make_batch(source, TrainConfig(batch=8, crop=8, photo_share=0.25), 3)[0].shape == (8, 8, 8, 3)


def test_the_brightness_draw_follows_the_calibration():
    measured = np.random.default_rng(0).uniform(30, 55, 400)
    distribution = BrightnessDistribution.from_means(measured)
    draws = np.array([distribution.draw(np.random.default_rng(k)) for k in range(2000)])
    assert draws.min() >= 29.5 and draws.max() <= 55.5
    assert abs(np.median(draws) - np.median(measured)) < 1.5
    assert abs(np.quantile(draws, 0.25) - np.quantile(measured, 0.25)) < 1.5
    # The photo crop's whole picture is brought to the drawn level, and its input made from it.
    photo = textured_photo(1, 400, 300)
    levels = []
    for k in range(200):
        inp, target = photo_pair(photo, 16, ForwardModel(), distribution, np.random.default_rng(k))
        levels.append(target.mean())
        assert inp.shape == (16, 16, 3) and abs(float(inp.mean()) - float(target.mean())) < 4
    assert 30 < np.mean(levels) < 55


def test_calibration_measures_target_brightness(tmp_path):
    accumulator = ForwardAccumulator()
    rng = np.random.default_rng(0)
    for level in (30, 40, 50, 60):
        target = np.clip(rng.normal(level, 8, (64, 64, 3)), 0, 255).astype(np.uint8)
        accumulator.add_pair(ForwardModel().degrade(target, rng), target)
    fit = accumulator.fit()
    assert fit.target_brightness is not None
    assert fit.target_brightness.quantiles[0] == pytest.approx(30, abs=1)
    assert fit.target_brightness.quantiles[-1] == pytest.approx(60, abs=1)
    again = type(fit).from_dict(json.loads(json.dumps(fit.to_dict())))
    assert again.target_brightness == fit.target_brightness


def test_unusable_photos_are_skipped_with_their_reason(tmp_path):
    folder = write_photos(tmp_path / "photos", count=2)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    Image.fromarray(textured_photo(9)[..., 0]).save(folder / "grey.png")
    Image.fromarray(np.dstack([textured_photo(8), np.full((120, 160), 255, np.uint8)])).save(folder / "alpha.png")
    Image.fromarray(textured_photo(7, 20, 20)).save(folder / "tiny.png")
    rgb_grey = np.repeat(textured_photo(6)[..., :1], 3, axis=2)
    Image.fromarray(rgb_grey).save(folder / "grey_as_rgb.png")
    source = photo_source(folder)
    for step in range(30):
        make_batch(source, TrainConfig(batch=4, crop=8), step)
    reasons = source.photos.skipped
    assert set(reasons) == {"broken.jpg", "grey.png", "alpha.png", "tiny.png", "grey_as_rgb.png"}
    assert "greyscale" in reasons["grey.png"] and "greyscale" in reasons["grey_as_rgb.png"]
    assert "alpha" in reasons["alpha.png"] and "smaller than one 32px crop" in reasons["tiny.png"]


def test_a_photo_above_pillows_own_pixel_limit_but_within_the_training_limits_is_used(monkeypatch):
    """rel_photo_large_aborts_training.py: a 179-256 MP photo passed TRAINING_LIMITS, then a plain
    Image.open() of the same bytes raised DecompressionBombError and ended training. Pillow's limit is
    lowered here so a 64x48 photo is such a photo."""
    photo = textured_photo(4, 64, 48)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 2x of it, 2000 px, is below 64 x 48
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(_png(photo)))
    assert np.array_equal(prepare_photo(_png(photo), "panorama.png", 32), photo)


def test_a_photo_deleted_during_training_is_skipped_and_listed(tmp_path):
    folder = write_photos(tmp_path / "photos", count=2)
    source = photo_source(folder)
    (folder / "photo_1.png").unlink()  # the corpus changes while training runs
    for step in range(12):
        make_batch(source, TrainConfig(batch=4, crop=8), step)
    assert source.photos.skipped == {"photo_1.png": "is gone from the folder since it was listed"}


def test_a_folder_with_no_usable_photo_stops_with_one_line_naming_it(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "notes.txt").write_text("no photos")
    with pytest.raises(ConfigError, match=f"no photos in {folder}"):
        list_photos(LocalStorage(folder), str(folder))
    (folder / "broken.png").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="no usable photo in"):
        make_batch(photo_source(folder), TrainConfig(batch=2, crop=8), 0)


def test_large_photos_are_box_downscaled_first():
    photo = textured_photo(3, 1200, 1100)
    data = _png(photo)
    prepared = prepare_photo(data, "big.png", 32, short_side=512)
    assert prepared.shape == (550, 600, 3)  # factor 2: the short side stays >= 512
    assert np.array_equal(prepared, box_downscale(photo, 2))
    with pytest.raises(PermanentImageError, match="smaller than one 1024px crop"):
        prepare_photo(data, "big.png", 1024)


def test_photo_only_training_lowers_the_loss(tmp_path, photos, compact_weights):
    config = TrainConfig(steps=30, batch=4, crop=12, eval_every=10, lr=1e-3, holdout=0.25, holdout_crops=4, eval_crop=12)
    trainer = make_trainer(None, str(tmp_path / "out" / "photo.safetensors"), str(compact_weights), config, settings(),
                           StorageFactory(settings()), photos_url=str(photos))
    losses: list[float] = []
    result = trainer.run(on_progress=lambda p: losses.append(p.loss))
    assert result.finished and result.steps == 30
    assert np.mean(losses[-8:]) < np.mean(losses[:8])
    provenance = json.loads((tmp_path / "out" / "photo.json").read_text())
    assert provenance["photos"]["count"] == 5 and provenance["pairs"]["train"] == 0
    assert provenance["holdout"]["photo_crops"] and provenance["brightness"] == COMPETITION_BRIGHTNESS.to_dict()
    assert provenance["calibration"]["forward_model"] == ForwardModel().to_dict()


def test_photo_only_training_needs_an_output(photos, compact_weights):
    with pytest.raises(ConfigError, match="needs -o/--output"):
        make_trainer(None, None, str(compact_weights), TrainConfig(steps=1), settings(), StorageFactory(settings()),
                     photos_url=str(photos))


def test_a_dataset_photos_folder_is_used_and_its_corpus_manifest_recorded(tmp_path, small_compact):
    data = write_dataset(tmp_path / "data")
    write_photos(data / "photos")
    result = run_training(str(data), None, str(small_compact), TrainConfig(steps=2, batch=4, crop=8, eval_every=2),
                          settings(), StorageFactory(settings()))
    assert result.finished
    provenance = json.loads((data / "trained_x4.json").read_text())
    assert provenance["photos"]["count"] == 5 and provenance["photos"]["corpus_manifest_sha256"] is None
    corpus = tmp_path / "corpus"
    write_photos(corpus / "photos", count=3)
    (corpus / "manifest.json").write_text("{}")
    run_training(str(data), None, str(small_compact), TrainConfig(steps=2, batch=4, crop=8, eval_every=2), settings(),
                 StorageFactory(settings()), photos_url=str(corpus), restart=True)
    provenance = json.loads((data / "trained_x4.json").read_text())
    assert provenance["photos"]["count"] == 3 and provenance["photos"]["corpus_manifest_sha256"]


def test_a_fine_tune_mixes_in_the_photo_corpus_when_it_is_there(tmp_path, small_compact):
    data = write_dataset(tmp_path / "data")
    corpus = tmp_path / "corpus"
    write_photos(corpus / "photos", count=4)
    (corpus / "manifest.json").write_text("{}")
    notes: list[str] = []
    config = TrainConfig(steps=2, batch=4, crop=8, eval_every=2)
    with_corpus = settings(photo_corpus=str(corpus))
    run_training(str(data), None, str(small_compact), config, with_corpus, StorageFactory(with_corpus), note=notes.append)
    provenance = json.loads((data / "trained_x4.json").read_text())
    assert provenance["photos"]["count"] == 4 and provenance["photos"]["folder"] == str(corpus)
    assert any("mixing in the photo corpus" in line for line in notes)
    absent = settings(photo_corpus=str(tmp_path / "absent"))
    run_training(str(data), None, str(small_compact), config, absent, StorageFactory(absent), restart=True)
    assert json.loads((data / "trained_x4.json").read_text())["photos"] is None


def test_fine_tuning_keeps_the_start_when_it_does_not_beat_it(tmp_path, compact_weights):
    """A learning rate that wrecks the model: no step beats the start, so the output is the start."""
    data = write_dataset(tmp_path / "data", count=16)
    config = TrainConfig(steps=3, batch=2, crop=8, eval_every=1, lr=0.02, ema_decay=0.0, holdout=0.25)
    result = run_training(str(data), None, str(compact_weights), config, settings(), StorageFactory(settings()))
    assert result.kept_start and result.best_step == 0 and result.start_psnr == result.best_psnr
    provenance = json.loads((data / "trained_x4.json").read_text())
    assert provenance["kept_start"] and len(provenance["holdout"]["pairs"]) >= 4  # enough held back to rank
    from workers.ops.upscale import load_upscaler

    image = textured_photo(2, 24, 16)[None]
    kept = load_upscaler(data / "trained_x4.safetensors", "cpu", "fp32").upscale(image)
    assert np.array_equal(kept, load_upscaler(compact_weights, "cpu", "fp32").upscale(image))


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()
