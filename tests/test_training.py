"""Fine-tuning on a dataset's training pairs: it learns, it is reproducible, it resumes, it refuses
val/ and test/, and its checkpoint is what the learned preset runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers.models import make_random_compact, make_random_rrdb
from tests.helpers.training import TINY, settings, write_dataset
from workers.errors import ConfigError, UnsupportedModelError
from workers.io.storage import LocalStorage, StorageFactory
from workers.ops.degrade import COMPETITION_BRIGHTNESS, ForwardModel
from workers.ops.upscale import load_upscaler
from workers.training.artifacts import TrainingOutput
from workers.training.batches import BatchSource, PairCache, make_batch
from workers.training.config import TrainConfig
from workers.training.job import run_training
from workers.training.pairs import training_pairs
from workers.training.setup import make_trainer


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "data")


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random compact model: the training mechanics at a fraction of the real model's cost."""
    return make_random_compact(tmp_path_factory.mktemp("small") / "compact.pth")




def train(root: Path, start: Path, config: TrainConfig = TINY, **kwargs):  # TrainResult
    return run_training(str(root), kwargs.pop("output", None), str(start), config, settings(),
                        StorageFactory(settings()), **kwargs)


def test_a_few_steps_lower_the_loss_and_write_checkpoint_and_provenance(tiny, compact_weights):
    trainer = make_trainer(str(tiny), None, str(compact_weights), TrainConfig(steps=40, batch=4, crop=12, eval_every=10,
                                                                                 lr=1e-3, holdout=0.25), settings(),
                           StorageFactory(settings()))
    losses = []
    result = trainer.run(on_progress=lambda p: losses.append(p.loss))
    assert result.finished and result.steps == 40 and len(losses) == 40
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    provenance = json.loads((tiny / "trained_x4.json").read_text())
    assert provenance["steps"] == 40 and provenance["finished"] and len(provenance["curve"]) == 5  # the start + 4
    assert provenance["curve"][0]["step"] == 0 and provenance["start"]["holdout_psnr"] is not None
    assert provenance["start"]["sha256"] and provenance["holdout"]["pairs"] and provenance["seed"] == 0
    assert provenance["calibration"]["forward_model"]["kernel"] == "box"
    assert (tiny / "trained_x4.safetensors").is_file() and (tiny / "trained_x4.safetensors.state").is_file()


def test_fresh_degradations_differ_between_steps_and_repeat_for_a_seed(tiny):
    listing = training_pairs(LocalStorage(tiny))
    source = BatchSource(ForwardModel(), COMPETITION_BRIGHTNESS, PairCache(LocalStorage(tiny), listing.pairs, 1 << 30),
                         range(len(listing.pairs)))
    config = TrainConfig(batch=4, crop=8, fresh_share=1.0)
    first, again = make_batch(source, config, 0), make_batch(source, config, 0)
    second = make_batch(source, config, 1)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert not np.array_equal(first[0], second[0])
    other_seed = make_batch(source, TrainConfig(batch=4, crop=8, fresh_share=1.0, seed=1), 0)
    assert not np.array_equal(first[0], other_seed[0])
    # A fresh input is the forward model of its own target crop: as dark, and 4x smaller.
    inputs, targets = first
    assert inputs.shape == (4, 8, 8, 3) and targets.shape == (4, 32, 32, 3)
    assert abs(inputs.mean() - targets.mean()) < 3


def test_same_seed_gives_the_same_weights_on_cpu(tmp_path, small):
    one, two = write_dataset(tmp_path / "one"), write_dataset(tmp_path / "two")
    train(one, small)
    train(two, small)
    assert (one / "trained_x4.safetensors").read_bytes() == (two / "trained_x4.safetensors").read_bytes()


def test_resume_continues_where_it_stopped_and_matches_an_uninterrupted_run(tmp_path, small):
    whole, split = write_dataset(tmp_path / "whole"), write_dataset(tmp_path / "split")
    config = TrainConfig(steps=6, batch=4, crop=12, eval_every=3, holdout=0.25, ema_decay=0.9)
    train(whole, small, config)
    interrupted = make_trainer(str(split), None, str(small), config, settings(), StorageFactory(settings()))
    halfway = interrupted.run(should_stop=lambda: interrupted.step >= 3)  # as a chunk deadline or Ctrl-C would
    assert halfway.steps == 3 and not halfway.finished
    resumed = train(split, small, config)
    assert resumed.steps == 6 and resumed.finished
    assert [c["step"] for c in json.loads((split / "trained_x4.json").read_text())["curve"]] == [0, 3, 6]  # history kept
    state = TrainingOutput(LocalStorage(split), "trained_x4.safetensors")
    assert state.storage.exists(state.state)
    assert (whole / "trained_x4.safetensors").read_bytes() == (split / "trained_x4.safetensors").read_bytes()


@pytest.mark.slow
def test_minutes_stop_cleanly_with_the_best_checkpoint(tiny, small):
    result = train(tiny, small, TrainConfig(steps=100_000, batch=2, crop=8, minutes=0.05, eval_every=1000))
    assert result.finished and 0 < result.steps < 100_000 and result.seconds < 30
    assert (tiny / "trained_x4.safetensors").is_file()  # evaluated and saved when the budget ran out


def test_a_time_budget_given_alone_is_the_whole_budget(tiny, small):
    """--minutes alone is not cut short by a default step count."""
    config = TrainConfig(batch=2, crop=8, minutes=0.02, eval_every=1000)
    assert config.step_budget is None and TrainConfig().step_budget == 600
    result = train(tiny, small, config)
    assert result.finished and result.seconds >= 0.02 * 60 * 0.9


def test_re_running_a_used_budget_trains_a_new_phase_at_full_learning_rate(tiny, small):
    config = TrainConfig(steps=4, batch=2, crop=8, eval_every=2, holdout=0.25)
    assert train(tiny, small, config).steps == 4
    longer = make_trainer(str(tiny), None, str(small), TrainConfig(steps=8, batch=2, crop=8, eval_every=2, holdout=0.25),
                          settings(), StorageFactory(settings()))
    assert longer.phase.number == 2 and longer.phase.start_step == 4
    assert longer._learning_rate(0.0) == pytest.approx(longer.config.lr)  # a warm restart, not the schedule's tail
    assert longer.run().steps == 8
    again = make_trainer(str(tiny), None, str(small), TrainConfig(steps=8, batch=2, crop=8, eval_every=2, holdout=0.25),
                         settings(), StorageFactory(settings()))
    assert again.run().steps == 8  # the same --steps again: nothing more was asked for


def test_val_and_test_are_refused(tiny, small):
    for split in ("val", "test"):
        (tiny / split).mkdir()
        with pytest.raises(ConfigError, match="refusing"):
            train(tiny / split, small)


def test_bad_pairs_are_skipped_and_reported(tiny, small):
    (tiny / "train" / "train" / "gt_00000.png").write_bytes(b"truncated")
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tiny / "train" / "gt" / "gt_00001.png")  # not 4x
    (tiny / "train" / "gt" / "gt_00002.png").unlink()  # missing partner
    result = train(tiny, small, TrainConfig(steps=4, batch=2, crop=8, eval_every=2, holdout=0.25))
    assert result.finished
    reasons = " ".join(f"{k}: {r}" for k, r in result.skipped)
    assert "gt_00002.png: no target" in reasons
    provenance = json.loads((tiny / "trained_x4.json").read_text())
    logged = {s["file"] for s in provenance["pairs"]["skipped"]}
    assert "train/train/gt_00002.png" in logged


def test_a_model_that_is_not_4x_rgb_and_a_corrupt_state_are_named(tiny, tmp_path, small):
    import torch
    from spandrel.architectures.Compact import Compact

    x2 = tmp_path / "x2.pth"
    torch.save({"params": Compact(num_feat=8, num_conv=2, upscale=2).state_dict()}, x2)
    with pytest.raises(UnsupportedModelError, match="x2.pth: model scale is x2"):
        train(tiny, x2)
    (tiny / "trained_x4.safetensors.state").write_bytes(b"\x00garbage")
    with pytest.raises(ConfigError, match=r"trained_x4\.safetensors\.state: it is corrupt"):
        train(tiny, small)
    assert train(tiny, small, restart=True).finished  # --restart ignores it


def test_rrdb_trains_too(tiny, tmp_path):
    rrdb = make_random_rrdb(tmp_path / "rrdb.pth", blocks=1)
    result = train(tiny, rrdb, TrainConfig(steps=2, batch=2, crop=8, eval_every=2, holdout=0.25))
    assert result.finished and load_upscaler(tiny / "trained_x4.safetensors", "cpu").architecture == "ESRGAN"


def test_the_checkpoint_round_trips_through_spandrel_into_the_upscaler(tiny, compact_weights):
    train(tiny, compact_weights)
    upscaler = load_upscaler(tiny / "trained_x4.safetensors", "cpu")
    image = np.asarray(Image.open(tiny / "train" / "train" / "gt_00003.png"))[None]
    assert upscaler.architecture == "RealESRGAN Compact"
    assert upscaler.upscale(image).shape == (1, 64, 96, 3)
    ensembled = upscaler.upscale(image, tta=True)
    assert ensembled.shape == (1, 64, 96, 3) and not np.array_equal(ensembled, upscaler.upscale(image))


def _poisoned_at(step: int):  # a _loss stand-in
    """The real loss, except NaN on ``step``'s batch (counted by calls: one call per step)."""
    from workers.training import finetune

    real, calls = finetune._loss, []

    def loss(pred, target, config):
        calls.append(1)
        value = real(pred, target, config)
        return value * float("nan") if len(calls) == step + 1 else value

    return loss


@pytest.mark.parametrize("host_checks", [True, False], ids=["checked-on-host", "skipped-on-device"])
def test_a_non_finite_step_changes_no_weight_and_training_goes_on(tiny, small, monkeypatch, host_checks):
    """On CUDA the skip is decided on the device (fused Adam's found_inf), with no host sync per step;
    the same path runs here on a CPU, next to the host check CPUs use."""
    from workers.training import finetune

    trainer = make_trainer(str(tiny), None, str(small), TINY, settings(), StorageFactory(settings()))
    trainer = finetune.Trainer(trainer.data, trainer.output, small, "file:small", TINY, "cpu", restart=True,
                               host_checks=host_checks)
    weights: list[list[torch.Tensor]] = []
    real_step = trainer._train_step

    def step_and_snapshot(*args):
        loss = real_step(*args)
        weights.append([p.detach().clone() for p in trainer.model.parameters()])
        return loss

    monkeypatch.setattr(trainer, "_train_step", step_and_snapshot)
    monkeypatch.setattr(finetune, "_loss", _poisoned_at(2))
    result = trainer.run()
    assert result.steps == TINY.steps and result.finished
    assert all(torch.equal(a, b) for a, b in zip(weights[1], weights[2], strict=True))  # step 2 changed nothing
    assert not all(torch.equal(a, b) for a, b in zip(weights[2], weights[3], strict=True))  # step 3 trained
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_batches_prefetched_on_a_thread_are_the_batches_of_their_steps(tiny):
    from workers.io.inflight import Prefetcher

    source = make_trainer(str(tiny), None, str(make_random_compact(tiny / "c.pth")), TINY, settings(),
                          StorageFactory(settings())).source
    with Prefetcher(lambda step: make_batch(source, TINY, step)) as prefetch:
        for step in (0, 1, 2, 2, 5, 6):  # a repeated and a skipped index are computed directly
            got, expected = prefetch.get(step), make_batch(source, TINY, step)
            assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))


# -- what defines a run, and the output it may replace (rel_train_corpus_change_overwrites.py) ----------------


def _photo_run(tmp_path: Path, small: Path, steps: int, **kwargs):  # noqa: ANN202 - TrainResult
    config = TrainConfig(steps=steps, batch=4, crop=8, lr=2e-3, holdout_crops=4, eval_crop=8, eval_every=4,
                         **kwargs.pop("config", {}))
    return run_training(None, str(tmp_path / "out" / "model.safetensors"), str(small), config, settings(),
                        StorageFactory(settings()), photos_url=str(tmp_path / "photos"), note=lambda line: None, **kwargs)


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_changed_corpus_continues_the_run_and_keeps_the_trained_model(tmp_path, small):
    from tests.helpers.training import textured_photo, write_photos

    write_photos(tmp_path / "photos", count=5, width=48, height=40)
    first = _photo_run(tmp_path, small, 12)
    output = tmp_path / "out" / "model.safetensors"
    assert not first.kept_start and first.best_step > 0
    trained = _sha(output)
    Image.fromarray(textured_photo(99, 48, 40)).save(tmp_path / "photos" / "photo_99.png")  # the corpus grows
    stopped = _photo_run(tmp_path, small, 24, should_stop=lambda: True)  # a Ctrl-C right after the next start
    assert stopped.steps == 12 and _sha(output) == trained
    assert any("photos changed since step 12" in line for line in stopped.notes)
    resumed = _photo_run(tmp_path, small, 24)
    assert resumed.steps == 24  # it went on from step 12, it did not start again
    if resumed.best_step == 12 or resumed.kept_output:
        assert _sha(output) == trained


def test_a_state_of_another_run_never_overwrites_a_better_output(tmp_path, small):
    from tests.helpers.training import write_photos

    write_photos(tmp_path / "photos", count=5, width=48, height=40)
    assert not _photo_run(tmp_path, small, 12).kept_start
    output = tmp_path / "out" / "model.safetensors"
    trained = _sha(output)
    other = _photo_run(tmp_path, small, 4, config={"seed": 1}, should_stop=lambda: True)  # another run, same output
    assert other.kept_output and not other.kept_start and other.steps == 0
    assert _sha(output) == trained
    assert any("stays unless a checkpoint beats it" in line for line in other.notes)
    restarted = _photo_run(tmp_path, small, 12, restart=True, should_stop=lambda: True)  # --restart: the same rule
    assert restarted.kept_output and _sha(output) == trained


def test_held_back_pairs_are_whole_scenes_the_dataset_names(tmp_path, small):
    data = write_dataset(tmp_path / "data", count=16)
    scenes = {f"gt_{k:05d}": f"scene-{k // 4}" for k in range(16)}  # four pictures, four pairs each
    (data / "train" / "scenes.json").write_text(json.dumps(scenes))
    train(data, small, TrainConfig(steps=2, batch=2, crop=8, eval_every=2, holdout=0.25))
    provenance = json.loads((data / "trained_x4.json").read_text())
    held = {name.removesuffix(".png") for name in provenance["holdout"]["pairs"]}
    held_scenes = {scenes[name] for name in held}
    assert len(held) == 4 and len(held_scenes) == 1  # one whole scene, no pair of a trained one
    assert provenance["pairs"]["held_back_scenes"] == sorted(held_scenes) and provenance["pairs"]["train"] == 12
