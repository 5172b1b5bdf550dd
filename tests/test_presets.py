"""Presets: each names one recipe, and refuses what would make its name a lie."""

import re

import numpy as np
import pytest

from workers.errors import ConfigError
from workers.ops.degrade import ForwardModel
from workers.ops.denoise import DenoiseSpec
from workers.ops.tone import ToneCurve
from workers.run.presets import PRESETS, Checkpoint, PresetInputs, build_pipeline
from workers.training.calibrate import Calibration
from workers.training.forward_fit import ForwardFit


@pytest.fixture
def curve() -> ToneCurve:
    identity = np.tile(np.arange(256, dtype=float), (3, 1))
    return ToneCurve(lut=identity, n_pairs=1, pixels=(1, 1, 1), names_sha256="", created_at="2026-01-01T00:00:00+00:00")


def calibration(curve: ToneCurve, ratio: float, nlm_h: float = 9.0) -> Calibration:
    fit = ForwardFit(ForwardModel(), ratio, {"box": 1.0, "bicubic": 2.0}, -0.5, 0.99, 0.001, (20, 200), 100, 1)
    return Calibration(fit, curve, nlm_h)


@pytest.fixture
def darkened(curve) -> Calibration:
    return calibration(curve, ratio=0.4)


@pytest.fixture
def equally_dark(curve) -> Calibration:
    return calibration(curve, ratio=1.0)


def test_seed_is_the_seed_and_nothing_else(darkened):
    spec = build_pipeline("seed")
    assert (spec.channel_order, spec.resize_multiple, spec.upscaler, spec.tone) == ("bgr", 8, "model", "")
    with pytest.raises(ConfigError, match="no tone curve"):
        build_pipeline("seed", PresetInputs(calibration=darkened))
    with pytest.raises(ConfigError, match="--preset standard"):
        build_pipeline("seed", PresetInputs(denoise=DenoiseSpec(h=5)))
    with pytest.raises(ConfigError, match="--tta"):
        build_pipeline("seed", PresetInputs(tta=True))


def test_standard_takes_a_curve_when_it_applies(darkened, equally_dark, curve):
    assert build_pipeline("standard").tone == ""
    assert build_pipeline("standard", PresetInputs(DenoiseSpec(h=5), darkened)).tone == curve.to_json().decode()
    assert build_pipeline("standard", PresetInputs(DenoiseSpec(h=5), equally_dark)).tone == ""


@pytest.mark.parametrize("name", ["quality", "perceptual"])
def test_calibrated_presets_need_a_calibration_not_a_tone_curve(name, darkened, equally_dark):
    with pytest.raises(ConfigError, match="producer calibrate"):
        build_pipeline(name)
    assert build_pipeline(name, PresetInputs(calibration=darkened)).tone
    untoned = build_pipeline(name, PresetInputs(calibration=equally_dark))
    assert untoned.tone == "" and (untoned.denoise.h, untoned.denoise.h_color) == (9.0, 9.0)  # the calibrated strength


def test_quality_is_bicubic_with_gain_scaled_nlm_only_where_the_tone_applies(darkened, equally_dark, curve):
    toned = build_pipeline("quality", PresetInputs(calibration=darkened))
    assert toned.upscaler == "bicubic" and toned.scale_nlm_by_gain
    plain = build_pipeline("quality", PresetInputs(calibration=equally_dark))
    assert plain.upscaler == "bicubic" and not plain.scale_nlm_by_gain
    chosen = build_pipeline("quality", PresetInputs(DenoiseSpec(h=4, h_color=4), equally_dark))
    assert chosen.denoise.h == 4  # an explicit strength beats the calibrated one
    off = build_pipeline("quality", PresetInputs(calibration=calibration(curve, 1.0, nlm_h=0.0)))
    assert off.denoise.method == "none"  # calibration found NL-means only hurts


def test_learned_runs_the_trained_model_on_the_raw_input():
    with pytest.raises(ConfigError, match="producer train"):
        build_pipeline("learned")
    spec = build_pipeline("learned", PresetInputs(checkpoint=Checkpoint("models/ab.safetensors", "ab" * 32), tta=True))
    assert (spec.upscaler, spec.checkpoint, spec.tta, spec.denoise.method) == ("learned", "models/ab.safetensors", True, "none")
    assert "checkpoint" in spec.content() and "tta" in spec.content()


def test_fields_added_later_leave_older_run_ids_alone():
    assert set(build_pipeline("standard").content()) == {
        "preset", "denoise", "channel_order", "resize_multiple", "upscaler", "tone", "scale_nlm_by_gain"}


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match=re.escape("No such preset: fast. Known: " + ", ".join(sorted(PRESETS)) + ".")):
        build_pipeline("fast")


def test_unknown_preset_suggests_the_closest_name():
    with pytest.raises(ConfigError, match=r"No such preset: qualty\. Did you mean quality\?"):
        build_pipeline("qualty")


def test_a_denoiser_the_user_names_runs_even_at_the_seeds_own_strength(curve):
    checkpoint = Checkpoint("models/ab.safetensors", "ab" * 32)
    named = build_pipeline("learned", PresetInputs(checkpoint=checkpoint, denoise_given=True))
    assert named.denoise == DenoiseSpec()  # NL-means h=7, as `--denoise nlm` asks
    assert build_pipeline("learned", PresetInputs(checkpoint=checkpoint)).denoise.method == "none"
    calibrated = calibration(curve, 1.0, nlm_h=3.0)
    assert build_pipeline("quality", PresetInputs(calibration=calibrated)).denoise.h == 3.0
    assert build_pipeline("quality", PresetInputs(calibration=calibrated, denoise_given=True)).denoise == DenoiseSpec()
    assert build_pipeline("seed", PresetInputs(denoise_given=True)).denoise == DenoiseSpec()  # the seed's own settings
