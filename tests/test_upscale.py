import sys
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.helpers.images import noisy_image
from tests.helpers.models import make_random_rrdb, nearest_x4, stub_upscaler
from workers.errors import DeviceOutOfMemoryError, UnsupportedModelError
from workers.ops.metrics import psnr
from workers.ops.resample import resize_to_multiple
from workers.ops.upscale import TilePolicy, Upscaler, load_upscaler, tiled_forward


@pytest.fixture(scope="module")
def upscaler(weights_path) -> Upscaler:
    return load_upscaler(weights_path, device="cpu")


@pytest.mark.parametrize(("tile", "overlap"), [(8, 2), (7, 3), (32, 0), (5, 4)])
def test_tiled_forward_stitches_exactly_for_a_local_operator(tile, overlap):
    x = torch.rand(2, 3, 19, 23)
    assert torch.equal(tiled_forward(nearest_x4, x, tile, overlap, 4), nearest_x4(x))


def test_upscale_shape_dtype_and_range(upscaler):
    out = upscaler.upscale(noisy_image(32, 24)[None])
    assert out.shape == (1, 96, 128, 3) and out.dtype == np.uint8


def test_batch_matches_single_images(upscaler):
    images = np.stack([noisy_image(32, 24, seed=s) for s in range(3)])
    batched = upscaler.upscale(images)
    for i in range(3):
        single = upscaler.upscale(images[i : i + 1])[0]
        assert np.abs(batched[i].astype(int) - single.astype(int)).max() <= 1


def test_tiled_agrees_with_untiled(upscaler):
    """Tiles of 24 with 8px of context: visually identical (PSNR > 40 dB) and close away from seams."""
    image = noisy_image(48, 40, seed=3)[None]
    whole = upscaler.upscale(image)[0]
    tiled = replace(upscaler, tiles=TilePolicy(max_pixels=100, size=24, overlap=8)).upscale(image)[0]
    assert psnr(whole, tiled) > 40
    diff = np.abs(whole.astype(int) - tiled.astype(int)).max(-1)
    away = np.ones(diff.shape, bool)
    away[96 - 32 : 96 + 32, :] = away[:, 96 - 32 : 96 + 32] = False  # the seams are at input 24 -> output 96
    assert diff[away].mean() < 1.0


def test_bgr_order_feeds_the_network_flipped_channels(upscaler):
    image = noisy_image(16, 12)[None]
    bgr = upscaler.upscale(image, channel_order="bgr")
    manual = upscaler.upscale(np.ascontiguousarray(image[..., ::-1]))[..., ::-1]
    assert np.array_equal(bgr, manual)
    assert not np.array_equal(bgr, upscaler.upscale(image))


def test_one_pixel_image_is_padded_by_the_model_wrapper(upscaler):
    assert upscaler.upscale(noisy_image(1, 1)[None]).shape == (1, 4, 4, 3)


class _OomAbove:
    """Stands in for a GPU (none exists here): raises CUDA OOM above a pixel budget."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.calls: list[tuple[int, ...]] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(x.shape))
        if x.shape[0] * x.shape[2] * x.shape[3] > self.budget:
            raise torch.OutOfMemoryError("simulated")
        return nearest_x4(x)


def _with_fake_device(upscaler: Upscaler, forward: _OomAbove, tiles: TilePolicy) -> Upscaler:
    fake = replace(upscaler, tiles=tiles)
    object.__setattr__(fake, "_model_forward", forward)
    return fake


def test_simulated_oom_splits_the_batch_then_tiles():
    forward = _OomAbove(budget=20 * 20)
    fake = _with_fake_device(Upscaler(None, torch.device("cpu"), torch.float32, TilePolicy()), forward,
                             TilePolicy(max_pixels=10**6, size=16, overlap=2))
    images = np.stack([noisy_image(24, 24, seed=s) for s in range(4)])
    out = fake.upscale(images)
    expected = nearest_x4(torch.from_numpy(images).permute(0, 3, 1, 2).float()).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(out, expected.astype(np.uint8))
    assert (4, 3, 24, 24) in forward.calls and (1, 3, 24, 24) in forward.calls  # tried whole, then singles
    assert any(c[2] < 24 for c in forward.calls)  # then tiles


def test_simulated_oom_on_the_smallest_tile_is_a_transient_error():
    fake = _with_fake_device(Upscaler(None, torch.device("cpu"), torch.float32, TilePolicy()), _OomAbove(budget=0),
                             TilePolicy(max_pixels=10**6, size=16, overlap=2))
    with pytest.raises(DeviceOutOfMemoryError):
        fake.upscale(noisy_image(24, 24)[None])


def test_seed_resize_to_multiple_of_8():
    hr = np.zeros((4 * 13, 4 * 9, 3), np.uint8)  # odd input sizes: 52 x 36 -> 48 x 32
    assert resize_to_multiple(hr, 8).shape == (48, 32, 3)
    aligned = noisy_image(32, 16)
    assert resize_to_multiple(aligned, 8) is aligned


def test_rejects_a_2x_model(tmp_path):
    import torch as t
    from spandrel.architectures.ESRGAN import ESRGAN

    path = tmp_path / "x2.pth"
    t.save({"params_ema": ESRGAN(num_blocks=1, scale=2).state_dict()}, path)
    with pytest.raises(UnsupportedModelError, match="x2"):
        load_upscaler(path, "cpu")


def test_rejects_a_file_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("not a model")
    with pytest.raises(UnsupportedModelError, match="notes.pth"):
        load_upscaler(path, "cpu")


@pytest.mark.parametrize("name", ["RealESRGAN_x4plus_anime_6B.pth", "realesr-animevideov3.pth"])
def test_other_offline_models_load(name):
    from tests.helpers.paths import weights_file

    if not weights_file(name).is_file():
        pytest.skip(f"{name} not present")
    model = load_upscaler(weights_file(name), "cpu")
    assert model.upscale(noisy_image(8, 8)[None]).shape == (1, 32, 32, 3)


def test_random_stand_in_weights_load(tmp_path):
    model = load_upscaler(make_random_rrdb(tmp_path / "r.pth", blocks=1), "cpu")
    assert model.architecture == "ESRGAN"


# -- reduced precision, checked before any clamp -------------------------------------------------------------


def test_fp16_overflow_to_inf_is_recomputed_in_fp32_through_the_same_wrapper():
    """spandrel clamps in place: checked after it, +inf is already a white 255 that passes."""
    image = noisy_image(13, 11)[None]  # not a multiple of 8: the wrapper pads, and must pad the recompute too
    fp32 = stub_upscaler(torch.float32).upscale(image)
    assert np.array_equal(fp32, nearest_x4(torch.from_numpy(image).permute(0, 3, 1, 2).float())
                          .permute(0, 2, 3, 1).numpy().astype(np.uint8))
    assert np.array_equal(stub_upscaler(torch.float16).upscale(image), fp32)


def test_fp16_overflow_is_recomputed_per_tile_and_with_tta():
    upscaler = replace(stub_upscaler(torch.float16), tiles=TilePolicy(max_pixels=100, size=8, overlap=2))
    image = noisy_image(20, 12, seed=4)[None]
    expected = stub_upscaler(torch.float32).upscale(image)
    assert np.array_equal(upscaler.upscale(image), expected)
    assert np.array_equal(upscaler.upscale(image, tta=True), expected)  # nearest x4 is dihedral-equivariant


def test_half_input_conversion_equals_fp32_rounded_once():
    from workers.ops.upscale import _model_input

    values = torch.arange(256, dtype=torch.uint8)
    for dtype in (torch.float16, torch.bfloat16):
        assert torch.equal(_model_input(values, dtype), (values.float() / 255).to(dtype))


@pytest.mark.parametrize(("capability", "expected"), [((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16),
                                                      ((7, 5), torch.float16)])
def test_auto_precision_on_cuda_is_bf16_where_the_card_has_it(monkeypatch, capability, expected):
    from workers.ops.upscale import resolve_dtype

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert resolve_dtype("auto", torch.device("cuda")) is expected
    assert resolve_dtype("auto", torch.device("cpu")) is torch.float32
    assert resolve_dtype("fp16", torch.device("cuda")) is torch.float16


def test_channels_last_on_cpu_gives_the_same_output(weights_path):
    """The model runs channels_last everywhere now (twice as fast on a CPU): same pixels as NCHW."""
    upscaler = load_upscaler(weights_path, device="cpu")
    image = noisy_image(16, 12, seed=5)[None]
    x = torch.from_numpy(image).permute(0, 3, 1, 2).float() / 255
    model = upscaler.descriptor.model
    with torch.inference_mode():
        nchw = model.to(memory_format=torch.contiguous_format)(x.contiguous())
        model.to(memory_format=torch.channels_last)
    expected = nchw.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.abs(upscaler.upscale(image).astype(int) - expected.astype(int)).max() <= 1


# -- out of memory: recovered outside the except block, for every allocator ------------------------------------


class _RecordsExceptionState(_OomAbove):
    """Also records whether an exception was being handled when each pass started."""

    def __init__(self, budget: int, error: Callable[[], Exception]) -> None:
        super().__init__(budget)
        self.error = error
        self.handling: list[object] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.handling.append(sys.exc_info()[0])
        self.calls.append(tuple(x.shape))
        if x.shape[0] * x.shape[2] * x.shape[3] > self.budget:
            raise self.error()
        return nearest_x4(x)


@pytest.mark.parametrize("error", [
    lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    lambda: RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"),
    lambda: RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    lambda: torch.AcceleratorError("CUDA error: out of memory"),
], ids=["torch", "cudnn", "cublas", "cuda-api"])
def test_every_allocator_failure_splits_then_tiles_outside_the_except_block(error):
    forward = _RecordsExceptionState(budget=20 * 20, error=error)
    fake = _with_fake_device(Upscaler(None, torch.device("cpu"), torch.float32, TilePolicy()), forward,
                             TilePolicy(max_pixels=10**6, size=16, overlap=2))
    images = np.stack([noisy_image(24, 24, seed=s) for s in range(2)])
    expected = nearest_x4(torch.from_numpy(images).permute(0, 3, 1, 2).float()).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(fake.upscale(images), expected.astype(np.uint8))
    assert any(c[2] < 24 for c in forward.calls)  # it got to tiles
    assert set(forward.handling) == {None}, "a retry ran while the failed pass's exception (and tensors) lived"


def test_a_broken_cuda_context_is_not_retried_but_raised_as_device_lost():
    from workers.errors import DeviceLostError

    forward = _RecordsExceptionState(budget=0, error=lambda: torch.AcceleratorError(
        "CUDA error: an illegal memory access was encountered"))
    fake = _with_fake_device(Upscaler(None, torch.device("cpu"), torch.float32, TilePolicy()), forward, TilePolicy())
    with pytest.raises(DeviceLostError, match="illegal memory access"):
        fake.upscale(noisy_image(24, 24)[None])
    assert len(forward.calls) == 1  # no split, no tiles


def test_tile_windows_cover_the_output_once():
    covered = torch.zeros(1, 1, 4 * 19, 4 * 23)
    for window in __import__("workers.ops.upscale", fromlist=["tile_windows"]).tile_windows(19, 23, 8, 3, 4):
        covered[window.target] += 1
    assert torch.equal(covered, torch.ones_like(covered))
