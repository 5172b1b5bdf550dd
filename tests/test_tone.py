import dataclasses
import json
import tracemalloc

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tests.helpers.paths import DATASET
from workers.errors import ConfigError
from workers.io.storage import LocalStorage
from workers.ops.tone import (
    ToneAccumulator,
    ToneCurve,
    apply_tone,
    fit_from_pairs,
    isotonic,
    local_gain,
    scaled_nlm_strength,
)
from workers.training.calibrate import calibrate

LEVELS = np.arange(256)


def curve_of(lut: np.ndarray) -> ToneCurve:
    return ToneCurve(lut=lut, n_pairs=1, pixels=(1, 1, 1), names_sha256="", created_at="2024-01-01T00:00:00+00:00")


def identity_curve() -> ToneCurve:
    return curve_of(np.tile(LEVELS.astype(float), (3, 1)))


def assert_valid_curve(curve: ToneCurve) -> None:
    assert curve.lut.shape == (3, 256) and curve.lut_u8.shape == (3, 256)
    assert np.isfinite(curve.lut).all()
    assert curve.lut.min() >= 0 and curve.lut.max() <= 255
    assert (np.diff(curve.lut, axis=1) >= 0).all()
    assert (np.diff(curve.lut_u8.astype(int), axis=1) >= 0).all()


def smooth_image(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A smooth random RGB image covering most of 0..255 (bicubic blow-up of a coarse random grid)."""
    coarse = rng.uniform(-20, 275, (max(height // 16, 2), max(width // 16, 2), 3)).astype(np.float32)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).clip(0, 255).round().astype(np.uint8)


def degraded_pair(rng: np.random.Generator, noise: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """(dark input, target) following the sample's degradation, with a known inverse curve."""
    gt = smooth_image(rng, 256, 160)
    low = cv2.resize(gt, (64, 40), interpolation=cv2.INTER_AREA).astype(float) / 255
    dark = 255 * 0.6 * low**1.3 + rng.normal(0, noise, low.shape)
    return dark.clip(0, 255).round().astype(np.uint8), gt


# --- isotonic regression -------------------------------------------------------------------------


def test_isotonic_known_solutions():
    assert np.allclose(isotonic(np.array([1, 3, 2, 4]), np.ones(4)), [1, 2.5, 2.5, 4])
    assert np.allclose(isotonic(np.array([3, 1]), np.array([1, 3])), [1.5, 1.5])
    assert np.allclose(isotonic(np.array([5, 4, 3]), np.array([1, 1, 1])), [4, 4, 4])
    assert np.array_equal(isotonic(np.array([0, 1, 1, 7]), np.ones(4)), [0, 1, 1, 7])


@given(
    hnp.arrays(np.float64, st.integers(1, 40), elements=st.floats(0, 255)),
    st.data(),
)
def test_isotonic_is_monotone_and_keeps_the_weighted_mean(y, data):
    w = data.draw(hnp.arrays(np.float64, y.shape, elements=st.floats(0.5, 1000)))
    fit = isotonic(y, w)
    assert fit.shape == y.shape
    assert (np.diff(fit) >= -1e-9).all()
    assert np.sum(w * fit) == pytest.approx(np.sum(w * y), rel=1e-9, abs=1e-6)


# --- fitting -------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_fit_is_monotone_on_random_data(data):
    n_pairs = data.draw(st.integers(1, 3))
    low, high = sorted(data.draw(st.lists(st.integers(0, 255), min_size=2, max_size=2)))
    pairs = []
    for _ in range(n_pairs):
        h, w = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5))
        inp = data.draw(hnp.arrays(np.uint8, (h, w, 3), elements=st.integers(low, high)))
        target = data.draw(hnp.arrays(np.uint8, (4 * h, 4 * w, 3), elements=st.integers(0, 255)))
        pairs.append((inp, target))
    curve = fit_from_pairs(pairs)
    assert_valid_curve(curve)
    assert curve.n_pairs == n_pairs
    assert curve.pixels == (sum(i.shape[0] * i.shape[1] for i, _ in pairs),) * 3
    # Isotonic regression keeps each channel's pixel-weighted total (up to the stored rounding).
    for c in range(3):
        inputs = np.concatenate([i[..., c].ravel() for i, _ in pairs])
        targets = np.concatenate(
            [
                cv2.resize(t.astype(np.float32), i.shape[1::-1], interpolation=cv2.INTER_AREA)[..., c].ravel()
                for i, t in pairs
            ]
        )
        assert curve.lut[c, inputs].sum() == pytest.approx(targets.sum(), abs=1e-3 * len(inputs) + 1e-3)


def test_recovers_the_inverse_of_the_sample_degradation():
    rng = np.random.default_rng(0)
    accumulator = ToneAccumulator()
    for _ in range(30):
        accumulator.add_pair(*degraded_pair(rng))
    curve = accumulator.fit()
    expected = np.minimum(255 * (LEVELS / (255 * 0.6)) ** (1 / 1.3), 255)
    well_populated = accumulator.counts >= 100
    assert well_populated.sum(axis=1).min() > 100  # the check covers most of the input range
    error = np.abs(curve.lut - expected)[well_populated]
    assert error.max() < 3, error.max()
    assert_valid_curve(curve)


def test_recovers_an_exact_curve_from_blocky_targets():
    """Targets that are 4x4 blocks of curve(input): INTER_AREA gives curve(input) back exactly."""
    known = np.stack([255 * (LEVELS / 255) ** p for p in (0.5, 0.7, 0.9)])
    rng = np.random.default_rng(1)
    pairs = []
    for _ in range(5):
        inp = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        mapped = np.stack([known[c][inp[..., c]] for c in range(3)], axis=-1).round().astype(np.uint8)
        pairs.append((inp, mapped.repeat(4, axis=0).repeat(4, axis=1)))
    curve = fit_from_pairs(pairs)
    assert np.abs(curve.lut - known).max() <= 0.5 + 1e-9


def test_empty_bins_are_interpolated_and_ends_flat():
    rng = np.random.default_rng(2)
    inp = rng.integers(0, 101, (20, 20, 3), dtype=np.uint8)
    inp[0, 0] = 20  # make sure the lowest and highest used level exist
    inp[0, 1] = 100
    target = np.repeat(np.repeat(inp * 2, 4, axis=0), 4, axis=1).astype(np.uint8)
    curve = fit_from_pairs([(inp, target)])
    assert_valid_curve(curve)
    assert (curve.lut[:, 101:] == curve.lut[:, [100]]).all()
    lowest = inp.reshape(-1, 3).min(axis=0)
    for c in range(3):
        assert (curve.lut[c, : lowest[c]] == curve.lut[c, lowest[c]]).all()


def test_gap_between_levels_is_linear():
    inp = np.array([[[10, 10, 10], [50, 50, 50]]], np.uint8)
    target = np.repeat(np.repeat(np.array([[[30] * 3, [110] * 3]], np.uint8), 4, axis=0), 4, axis=1)
    curve = fit_from_pairs([(inp, target)])
    assert np.allclose(curve.lut[:, 10:51], np.linspace(30, 110, 41))
    assert (curve.lut[:, :10] == 30).all() and (curve.lut[:, 51:] == 110).all()


def test_fit_without_data_is_a_config_error():
    with pytest.raises(ConfigError, match="no training pixels"):
        ToneAccumulator().fit()


def test_target_must_be_exactly_four_times_the_input():
    acc = ToneAccumulator()
    with pytest.raises(ConfigError, match=r"gt_00042\.png.*exactly 4x"):
        acc.add_pair(np.zeros((10, 10, 3), np.uint8), np.zeros((40, 41, 3), np.uint8), name="gt_00042.png")
    with pytest.raises(ConfigError, match="uint8"):
        acc.add_pair(np.zeros((10, 10, 3), np.float32), np.zeros((40, 40, 3), np.uint8))


def test_memory_is_flat_in_the_number_of_pairs():
    def pairs(n: int):
        rng = np.random.default_rng(3)
        for _ in range(n):
            yield rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)

    def peak(n: int) -> int:
        tracemalloc.start()
        try:
            fit_from_pairs(pairs(n))
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    peak(1)  # warm imports and caches
    small, large = peak(10), peak(200)
    assert large < small * 1.25 + 32 * 1024, (small, large)


# --- application and gain ------------------------------------------------------------------------


def test_apply_tone_maps_each_channel_through_its_rounded_lut():
    lut = np.stack([np.sqrt(LEVELS / 255) * 255, LEVELS * 0.5, np.minimum(LEVELS * 1.5, 255)])
    curve = curve_of(lut)
    rgb = np.random.default_rng(4).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    out = apply_tone(rgb, curve)
    expected = np.stack([np.rint(lut[c]).astype(np.uint8)[rgb[..., c]] for c in range(3)], axis=-1)
    assert out.dtype == np.uint8 and np.array_equal(out, expected)
    with pytest.raises(ValueError):
        apply_tone(rgb.astype(np.float32), curve)


def test_local_gain_of_simple_curves():
    assert np.allclose(local_gain(identity_curve()), 1)
    doubling = curve_of(np.tile(np.minimum(2.0 * LEVELS, 255), (3, 1)))
    gain = local_gain(doubling)
    assert np.allclose(gain[:, :120], 2) and np.allclose(gain[:, 135:], 0)


def test_scaled_nlm_strength_follows_the_gain_at_the_mean_level():
    flat = np.full((8, 8, 3), 40, np.uint8)
    assert scaled_nlm_strength(flat, identity_curve(), 7, 5) == pytest.approx((7, 5))
    doubling = curve_of(np.tile(np.minimum(2.0 * LEVELS, 255), (3, 1)))
    assert scaled_nlm_strength(flat, doubling, 7, 5) == pytest.approx((14, 10))


# --- artifact ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_curve() -> ToneCurve:
    return calibrate(LocalStorage(DATASET)).tone


@pytest.mark.slow
def test_artifact_round_trips_exactly(sample_curve):
    data = sample_curve.to_json()
    back = ToneCurve.from_json(data)
    assert np.array_equal(back.lut, sample_curve.lut) and np.array_equal(back.lut_u8, sample_curve.lut_u8)
    for name in ("n_pairs", "pixels", "names_sha256", "created_at", "version"):
        assert getattr(back, name) == getattr(sample_curve, name)
    assert back.to_json() == data
    document = json.loads(data)
    assert document["kind"] == "lowlight-sr/tone-curve" and document["version"] == 1
    assert len(data) < 10_000


def test_curve_is_immutable(sample_curve):
    with pytest.raises(ValueError):
        sample_curve.lut[0, 0] = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        sample_curve.n_pairs = 3


def _document(**changes) -> bytes:
    document = json.loads(curve_of(np.tile(LEVELS.astype(float), (3, 1))).to_json())
    document.update(changes)
    return json.dumps(document).encode()


def _lut_with(row: int, level: int, value: object) -> list[list[object]]:
    lut = [list(map(float, LEVELS)) for _ in range(3)]
    lut[row][level] = value
    return lut


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not json", "not a JSON document"),
        (b"\xff\xfe\x00", "not a JSON document"),
        (b"[1, 2]", "kind must be"),
        (_document(kind="something-else"), "kind must be.*something-else"),
        (_document(version=2), "unsupported version 2"),
        (_document(version="1"), "unsupported version '1'"),
        (_document(lut=_lut_with(0, 0, 0)[:2]), "3 rows of 256"),
        (_document(lut=[row[:255] for row in _lut_with(0, 0, 0)]), "3 rows of 256"),
        (_document(lut="flat"), "3 rows of 256"),
        (_document(lut=_lut_with(1, 7, "7")), "values must be numbers"),
        (_document(lut=_lut_with(1, 7, True)), "values must be numbers"),
        (_document(lut=_lut_with(1, 100, 5.0)), "non-decreasing, channel G drops .* level 99"),
        (_document(lut=_lut_with(2, 255, 256.0)), r"in \[0, 255\]"),
        (_document(lut=_lut_with(0, 0, -1.0)), r"in \[0, 255\]"),
        (_document(lut=_lut_with(0, 3, float("nan"))), "NaN"),
        (_document(pixels=[1, 2]), "pixels must be 3"),
        (_document(n_pairs=-1), "n_pairs"),
    ],
)
def test_bad_artifacts_are_config_errors(data, message):
    with pytest.raises(ConfigError, match=message):
        ToneCurve.from_json(data)


def test_missing_field_is_named():
    document = json.loads(_document())
    del document["created_at"]
    with pytest.raises(ConfigError, match="missing field.*created_at"):
        ToneCurve.from_json(json.dumps(document).encode())
