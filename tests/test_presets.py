"""Presets: each names one recipe, and refuses what would make its name a lie."""

import re

import numpy as np
import pytest

from workers.errors import ConfigError
from workers.ops.denoise import DenoiseSpec
from workers.ops.tone import ToneCurve
from workers.run.presets import PRESETS, build_pipeline


@pytest.fixture
def curve() -> ToneCurve:
    identity = np.tile(np.arange(256, dtype=float), (3, 1))
    return ToneCurve(lut=identity, n_pairs=1, pixels=(1, 1, 1), names_sha256="", created_at="2026-01-01T00:00:00+00:00")


def test_seed_is_the_seed_and_nothing_else(curve):
    spec = build_pipeline("seed", DenoiseSpec())
    assert (spec.channel_order, spec.resize_multiple, spec.upscaler, spec.tone) == ("bgr", 8, "model", "")
    with pytest.raises(ConfigError, match="no tone curve"):
        build_pipeline("seed", DenoiseSpec(), curve)
    with pytest.raises(ConfigError, match="--preset standard"):
        build_pipeline("seed", DenoiseSpec(h=5))


def test_standard_takes_a_curve_when_given(curve):
    assert build_pipeline("standard", DenoiseSpec()).tone == ""
    assert build_pipeline("standard", DenoiseSpec(h=5), curve).tone == curve.to_json().decode()


@pytest.mark.parametrize("name", ["quality", "perceptual"])
def test_toned_presets_need_a_curve(name, curve):
    with pytest.raises(ConfigError, match="producer calibrate"):
        build_pipeline(name, DenoiseSpec())
    assert build_pipeline(name, DenoiseSpec(), curve).tone


def test_quality_is_bicubic_with_gain_scaled_nlm(curve):
    spec = build_pipeline("quality", DenoiseSpec(), curve)
    assert spec.upscaler == "bicubic" and spec.scale_nlm_by_gain


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match=re.escape(str(sorted(PRESETS)))):
        build_pipeline("fast", DenoiseSpec())
