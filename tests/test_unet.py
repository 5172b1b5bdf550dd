"""The project's NAFNet U-Net: spandrel loads it like any model, it starts as bilinear, it trains."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from workers.errors import ConfigError
from workers.ops.architectures import INITIAL, initial_model, write_initial
from workers.ops.unet import LowlightUNet, hyperparameters
from workers.ops.upscale import load_descriptor, load_upscaler

TINY = {"width": 4, "enc_blocks": (1, 2), "middle_blocks": 1, "dec_blocks": (1, 1)}


def tiny_file(path, **changes):  # noqa: ANN001, ANN201 - a test helper
    torch.manual_seed(0)
    model = LowlightUNet(**{**TINY, **changes})
    for p in model.parameters():  # leave the zero start, so the output depends on every layer
        p.data.add_(0.05 * torch.randn_like(p))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata={"format": "pt"})
    return model, path


def test_spandrel_loads_it_with_its_shape_from_the_weights(tmp_path):
    model, path = tiny_file(tmp_path / "unet.safetensors")
    descriptor = load_descriptor(path)
    assert descriptor.architecture.name == "Lowlight NAFNet U-Net" and descriptor.scale == 4
    assert descriptor.model.hyperparameters == model.hyperparameters == hyperparameters(model.state_dict())
    x = torch.rand(1, 3, 12, 20)
    with torch.inference_mode():
        assert torch.allclose(descriptor.model(x), model.eval()(x), atol=1e-6)


def test_untrained_it_is_bilinear_and_any_size_works(tmp_path):
    model = LowlightUNet(**TINY).eval()
    x = torch.rand(1, 3, 10, 14)  # not a multiple of the levels' 4: padded, then cropped
    with torch.inference_mode():
        y = model(x)
    assert y.shape == (1, 3, 40, 56)
    assert torch.allclose(y, F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False), atol=1e-6)


def test_the_upscaler_runs_it_in_fp32_and_bf16(tmp_path):
    _, path = tiny_file(tmp_path / "unet.safetensors")
    image = np.random.default_rng(0).integers(0, 255, (1, 16, 24, 3), dtype=np.uint8)
    exact = load_upscaler(path, "cpu", "fp32").upscale(image)
    half = load_upscaler(path, "cpu", "bf16").upscale(image)
    assert exact.shape == half.shape == (1, 64, 96, 3)
    assert np.abs(exact.astype(int) - half).max() <= 8


def test_named_initialisations_are_seeded_and_load(tmp_path):
    assert {"unet-16", "unet-24", "unet-32", "compact-64x16"} <= set(INITIAL)
    a, b = initial_model("compact-32x16", seed=3), initial_model("compact-32x16", seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    path = write_initial("unet-16", tmp_path / "u.safetensors")
    assert load_descriptor(path).model.hyperparameters["width"] == 16
    with pytest.raises(ConfigError, match="Did you mean unet-16"):
        initial_model("unet16")


def test_it_trains_like_any_start_checkpoint(tmp_path):
    from tests.helpers.training import settings, write_photos
    from workers.io.storage import StorageFactory
    from workers.training.config import TrainConfig
    from workers.training.job import run_training

    _, start = tiny_file(tmp_path / "start.safetensors")
    write_photos(tmp_path / "photos", count=4, width=48, height=40)
    config = TrainConfig(steps=4, batch=2, crop=8, eval_every=2, holdout_crops=2, eval_crop=8)
    result = run_training(
        None,
        str(tmp_path / "out.safetensors"),
        str(start),
        config,
        settings(),
        StorageFactory(settings()),
        photos_url=str(tmp_path / "photos"),
    )
    assert (
        result.finished and load_descriptor(tmp_path / "out.safetensors").architecture.name == "Lowlight NAFNet U-Net"
    )
