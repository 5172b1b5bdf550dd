"""workers.ops.nlm_torch against OpenCV itself: colored NL-means and its border padding.

CPU only and small images, so it runs in seconds; a CUDA test runs where a GPU is present.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from tests.helpers.images import noisy_image, opencv_nlm, synthetic
from tests.helpers.paths import DATASET
from workers.ops.denoise import DenoiseSpec
from workers.ops.metrics import psnr
from workers.ops.nlm_torch import (
    bytes_per_offset,
    chunk_for_budget,
    nlm_colored_torch,
    nlm_torch,
    pad_reflect101,
)
from workers.ops.opencv_lab import lab_to_rgb_u8, rgb_to_lab_u8


@pytest.fixture(autouse=True, scope="module")
def single_threaded():
    """Tiny images: one thread each is fastest, and immune to oversubscribed CI machines."""
    torch_threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    yield
    torch.set_num_threads(torch_threads)
    cv2.setNumThreads(cv_threads)




def torch_nlm(rgb: np.ndarray, h: float = 7, h_color: float = 7, template: int = 7, search: int = 21, **kw) -> np.ndarray:
    return nlm_colored_torch(torch.from_numpy(rgb)[None], h, h_color, template, search, **kw)[0].numpy()


def assert_equals_opencv(ours: np.ndarray, ref: np.ndarray) -> None:
    """The port claims OpenCV's output bit for bit, and is held to exactly that."""
    assert ours.shape == ref.shape and ours.dtype == np.uint8
    assert np.array_equal(ours, ref), f"{np.mean(ours != ref):.4%} of values differ, PSNR {psnr(ours, ref):.2f} dB"




@pytest.mark.parametrize(
    ("width", "height", "sigma", "seed"),
    [(32, 24, 10, 0), (32, 24, 25, 1), (48, 40, 15, 2), (48, 40, 20, 3)],
)
def test_matches_opencv_on_noisy_images(width, height, sigma, seed):
    rgb = synthetic(width, height, sigma, seed)
    assert_equals_opencv(torch_nlm(rgb), opencv_nlm(rgb))


def test_matches_opencv_on_the_repo_sample():
    bgr = cv2.imread(str(DATASET / "test" / "test_00001.png"), cv2.IMREAD_COLOR)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    assert rgb.shape == (40, 64, 3)
    assert_equals_opencv(torch_nlm(rgb), opencv_nlm(rgb))


@pytest.mark.parametrize(
    ("h", "h_color", "template", "search"),
    [(3, 10, 7, 21), (15, 4, 5, 11), (10, 10, 3, 7), (7, 7, 1, 5), (7, 7, 9, 5)],
)
def test_matches_opencv_for_other_parameters(h, h_color, template, search):
    rgb = noisy_image(20, 14, seed=5)
    assert_equals_opencv(torch_nlm(rgb, h, h_color, template, search), opencv_nlm(rgb, h, h_color, template, search))


@pytest.mark.parametrize(("width", "height"), [(1, 1), (2, 5), (5, 2), (7, 3), (13, 17)])
def test_tiny_and_odd_sizes(width, height):
    rgb = noisy_image(width, height, seed=width * height)
    out = torch_nlm(rgb)
    assert out.shape == (height, width, 3)
    assert_equals_opencv(out, opencv_nlm(rgb))


@pytest.mark.parametrize(("h", "h_color"), [(0, 0), (1e-6, 0), (0.3, 1e-3), (1e4, 1e4), (1e30, 3e38)])
def test_extreme_strengths_match_opencv(h, h_color):
    rgb = noisy_image(16, 12, seed=7)
    assert_equals_opencv(torch_nlm(rgb, h, h_color), opencv_nlm(rgb, h, h_color))


def test_zero_strength_only_averages_identical_patches():
    """With h = 0 only exact patch matches count, so the output is the input's Lab round trip."""
    rgb = noisy_image(16, 12, seed=8)
    round_trip = lab_to_rgb_u8(rgb_to_lab_u8(torch.from_numpy(rgb))).numpy()
    assert np.array_equal(torch_nlm(rgb, 0, 0), round_trip)


def test_batch_equals_single_images():
    images = np.stack([synthetic(24, 16, 15, seed) for seed in range(3)])
    batched = nlm_colored_torch(torch.from_numpy(images)).numpy()
    for image, out in zip(images, batched, strict=True):
        assert np.array_equal(out, torch_nlm(image))


@pytest.mark.parametrize("chunk", [1, 21, 50, 10_000])
def test_chunk_size_does_not_change_the_result(chunk):
    rgb = synthetic(20, 12, 20, 9)
    assert np.array_equal(torch_nlm(rgb, chunk=chunk), torch_nlm(rgb, chunk=441))


@pytest.mark.parametrize(("width", "height"), [(1, 1), (2, 5), (6, 4)])
def test_reflect101_padding_matches_copymakeborder(width, height):
    image = np.arange(width * height * 3, dtype=np.uint8).reshape(height, width, 3)
    ref = cv2.copyMakeBorder(image, 13, 13, 13, 13, cv2.BORDER_REFLECT_101)
    ours = pad_reflect101(torch.from_numpy(image).permute(2, 0, 1)[None], 13)[0].permute(1, 2, 0).numpy()
    assert np.array_equal(ours, ref)


def test_numpy_wrapper_takes_a_spec_and_non_contiguous_input():
    wide = noisy_image(40, 12, seed=3)
    view = wide[:, ::2]  # non-contiguous
    spec = DenoiseSpec(h=9, h_color=5, template=5, search=11)
    out = nlm_torch(view, spec)
    assert isinstance(out, np.ndarray) and out.shape == view.shape
    assert_equals_opencv(out, opencv_nlm(np.ascontiguousarray(view), 9, 5, 5, 11))


def test_empty_batch_and_empty_image_pass_through():
    assert nlm_colored_torch(torch.zeros((0, 4, 4, 3), dtype=torch.uint8)).shape == (0, 4, 4, 3)
    assert nlm_colored_torch(torch.zeros((1, 0, 4, 3), dtype=torch.uint8)).shape == (1, 0, 4, 3)


@pytest.mark.parametrize(
    ("images", "kwargs"),
    [
        (torch.zeros((4, 4, 3), dtype=torch.uint8), {}),
        (torch.zeros((1, 4, 4, 3), dtype=torch.float32), {}),
        (torch.zeros((1, 3, 4, 4), dtype=torch.uint8), {}),
        (torch.zeros((1, 4, 4, 3), dtype=torch.uint8), {"template": 4}),
        (torch.zeros((1, 4, 4, 3), dtype=torch.uint8), {"h": -1}),
        (torch.zeros((1, 4, 4, 3), dtype=torch.uint8), {"chunk": 0}),
    ],
)
def test_bad_input_raises_value_error(images, kwargs):
    with pytest.raises(ValueError):
        nlm_colored_torch(images, **kwargs)


def test_bytes_per_offset_grows_with_batch_and_size():
    one = bytes_per_offset(1, 160, 256)
    assert 1.2 * 2**20 < one < 1.6 * 2**20
    assert bytes_per_offset(8, 160, 256) == 8 * one
    assert bytes_per_offset(1, 320, 512) > 3.5 * one


def test_chunk_for_budget_gives_whole_search_rows():
    per_row = bytes_per_offset(8, 160, 256) * 21
    assert chunk_for_budget(5 * per_row + 1, 8, 160, 256) == 5 * 21
    assert chunk_for_budget(1, 8, 160, 256) == 21  # never less than one row
    assert chunk_for_budget(10**15, 8, 160, 256) == 441  # never more than the window


@pytest.mark.gpu
def test_cuda_matches_cpu():
    images = np.stack([synthetic(64, 40, 20, seed) for seed in range(4)])
    cpu = nlm_colored_torch(torch.from_numpy(images)).numpy()
    cuda = nlm_colored_torch(torch.from_numpy(images).cuda()).cpu().numpy()
    assert np.array_equal(cuda, cpu)


@pytest.mark.parametrize("tile", [1, 5, 8, 13, 40])
def test_tiles_do_not_change_the_result(tile):
    """The image is padded once and each tile reads its true neighbourhood: exact, not close."""
    images = np.stack([synthetic(23, 17, 20, seed) for seed in range(2)])
    whole = nlm_colored_torch(torch.from_numpy(images)).numpy()
    assert np.array_equal(nlm_colored_torch(torch.from_numpy(images), tile=tile, chunk=21).numpy(), whole)


class _OomAboveTile:
    """Stands in for a small card: out of memory unless the call is tiled to at most ``edge`` pixels
    and chunked to one search row (``edge`` None: never). Records what was asked."""

    def __init__(self, edge: int | None, error: Exception | None = None) -> None:
        self.edge, self.error, self.calls, self.handling = edge, error, [], []
        self.real = nlm_colored_torch

    def __call__(self, images, h, h_color, template, search, chunk, tile):
        import sys

        self.calls.append((chunk, tile))
        self.handling.append(sys.exc_info()[0])
        fits = self.edge is None or (chunk <= search and tile is not None and tile <= self.edge)
        if not fits:
            raise self.error
        return self.real(images, h, h_color, template, search, chunk, tile)


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory"),
                                   RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED")], ids=["torch", "cudnn"])
def test_device_nlm_chunks_then_tiles_on_out_of_memory(monkeypatch, error):
    import workers.ops.nlm_torch as module
    from workers.ops.denoise import denoise_on_device

    fake = _OomAboveTile(edge=16, error=error)
    monkeypatch.setattr(module, "nlm_colored_torch", fake)
    images = np.stack([synthetic(64, 40, 20, seed) for seed in range(2)])
    out = denoise_on_device(images, DenoiseSpec(), "cpu")
    assert np.array_equal(out, nlm_colored_torch(torch.from_numpy(images)).numpy())
    assert fake.calls == [(105, None), (21, None), (21, 32), (21, 16)]
    assert set(fake.handling) == {None}  # each retry ran after the failed attempt's exception was gone


def test_device_nlm_tiles_large_images_from_the_start(monkeypatch):
    import workers.ops.nlm_torch as module
    from workers.ops.denoise import denoise_on_device

    fake = _OomAboveTile(edge=None)
    monkeypatch.setattr(module, "nlm_colored_torch", fake)
    denoise_on_device(np.stack([synthetic(40, 24, 20, 1)]), DenoiseSpec(), "cpu", max_pixels=400)
    assert fake.calls == [(105, 20)]  # sqrt(400): 20 px tiles


def test_device_nlm_gives_up_below_the_smallest_tile(monkeypatch):
    import workers.ops.nlm_torch as module
    from workers.errors import DeviceOutOfMemoryError
    from workers.ops.denoise import denoise_on_device

    monkeypatch.setattr(module, "nlm_colored_torch", _OomAboveTile(edge=0, error=torch.OutOfMemoryError("oom")))
    with pytest.raises(DeviceOutOfMemoryError, match="does not fit"):
        denoise_on_device(np.stack([synthetic(80, 70, 20, 1)]), DenoiseSpec(), "cpu")


def test_device_nlm_reports_a_broken_context(monkeypatch):
    import workers.ops.nlm_torch as module
    from workers.errors import DeviceLostError
    from workers.ops.denoise import denoise_on_device

    monkeypatch.setattr(module, "nlm_colored_torch", _OomAboveTile(
        edge=0, error=torch.AcceleratorError("CUDA error: an illegal memory access was encountered")))
    with pytest.raises(DeviceLostError):
        denoise_on_device(np.stack([synthetic(20, 20, 20, 1)]), DenoiseSpec(), "cpu")
