import math

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from tests.helpers.images import noisy_image
from workers.ops.metrics import psnr, ssim


def test_psnr_known_value():
    a = np.zeros(100, np.uint8)
    b = np.full(100, 10, np.uint8)
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 100))
    assert psnr(a, a) == math.inf


def test_psnr_shape_mismatch():
    with pytest.raises(ValueError):
        psnr(np.zeros(3), np.zeros(4))


def test_ssim_matches_scikit_image():
    a = noisy_image(64, 48, seed=1)[..., 0]
    b = noisy_image(64, 48, seed=2)[..., 0]
    reference = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
    assert ssim(a, b) == pytest.approx(reference, abs=0.002)
    assert ssim(a, a) == pytest.approx(1.0)
