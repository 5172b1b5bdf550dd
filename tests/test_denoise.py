import cv2
import numpy as np
import pytest

from tests.helpers.images import noisy_image
from workers.errors import ConfigError
from workers.ops.denoise import DENOISERS, DenoiseSpec, denoise


def test_default_is_the_seed_call_on_bgr():
    rgb = noisy_image(40, 30)
    seed = cv2.cvtColor(
        cv2.fastNlMeansDenoisingColored(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), None, 7, 7, 7, 21), cv2.COLOR_BGR2RGB
    )
    assert np.array_equal(denoise(rgb, DenoiseSpec()), seed)


def test_denoising_reduces_noise():
    rng = np.random.default_rng(1)
    clean = np.full((32, 32, 3), 100, np.uint8)
    noisy = (clean + rng.normal(0, 10, clean.shape)).clip(0, 255).astype(np.uint8)
    assert denoise(noisy, DenoiseSpec()).astype(float).std() < noisy.astype(float).std() / 2


def test_none_is_identity():
    rgb = noisy_image()
    assert denoise(rgb, DenoiseSpec(method="none")) is rgb


@pytest.mark.parametrize("size", [(1, 1), (2, 5)])
def test_tiny_images(size):
    assert denoise(noisy_image(*size), DenoiseSpec()).shape == (size[1], size[0], 3)


@pytest.mark.parametrize(
    "kwargs", [{"method": "median"}, {"template": 6}, {"search": 5, "template": 7}, {"h": -1}]
)
def test_bad_specs_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        DenoiseSpec(**kwargs)


def test_registry_names():
    assert {"nlm", "none"} <= set(DENOISERS)


def test_unknown_denoiser_suggests_the_closest_name():
    with pytest.raises(ConfigError, match=r"No such denoiser: nlmm\. Did you mean nlm\?"):
        DenoiseSpec(method="nlmm")
