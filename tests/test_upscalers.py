"""The upscaler registry: names resolve to loaders, typos get a suggestion, bicubic needs no model."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers.images import noisy_image
from workers.errors import ConfigError
from workers.ops.resample import bicubic_x4
from workers.ops.upscalers import UPSCALERS, upscaler_kind
from workers.run.manifest import PipelineSpec


def test_every_upscaler_is_4x_and_names_its_loader() -> None:
    for name, kind in UPSCALERS.items():
        assert kind.name == name and kind.scale == 4 and ":" in kind.loader


def test_unknown_upscaler_suggests_the_closest_name() -> None:
    with pytest.raises(ConfigError, match=r"No such upscaler: bicubc\. Did you mean bicubic\?"):
        upscaler_kind("bicubc")
    with pytest.raises(ConfigError, match="No such upscaler"):
        PipelineSpec(upscaler="lanczos")  # a manifest naming an unknown upscaler is refused


def test_bicubic_through_the_registry_is_the_plain_function() -> None:
    images = np.stack([noisy_image(16, 12, seed=1), noisy_image(16, 12, seed=2)])
    upscaler = upscaler_kind("bicubic").load()
    out = upscaler.upscale(images, "bgr")  # channel order is irrelevant to a per-channel filter
    assert out.shape == (2, 48, 64, 3)
    assert np.array_equal(out[1], bicubic_x4(images[1]))
    assert upscaler.describe() == {"model": "bicubic"}


def test_model_upscaler_describes_its_checkpoint(weights_path) -> None:
    upscaler = upscaler_kind("model").load(weights_path, device="cpu", source="file:x")
    description = upscaler.describe()
    assert description["model"] == "file:x" and description["device"] == "cpu" and len(description["model_sha256"]) == 64
