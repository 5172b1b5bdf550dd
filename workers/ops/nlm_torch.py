"""OpenCV's colored NL-means (``cv2.fastNlMeansDenoisingColored``) in PyTorch, batched, on any device.

It follows OpenCV's own code step by step (``modules/photo/src/denoising.cpp``,
``fast_nlmeans_denoising_invoker*.hpp``), so that a GPU worker can denoise what took ~15 CPU cores of
OpenCV:

1. RGB -> 8-bit CIELAB exactly as ``cvtColor(COLOR_LBGR2Lab)`` (:mod:`workers.ops.opencv_lab`).
2. ``L`` is denoised with strength ``h`` (1-channel ``fastNlMeansDenoising``), ``a,b`` together with
   ``h_color`` (2-channel call, one weight shared by both channels).
3. For every offset of the ``search x search`` window, the patch distance is the sum of squared
   differences over a ``template x template`` patch (and over the channels of the group), computed
   for all pixels at once with a box filter. The image is padded by ``search//2 + template//2`` with
   ``BORDER_REFLECT_101`` first.
4. OpenCV's weight: ``ssd >> log2(next_pow2(template**2))`` indexes a table of
   ``round(M * exp(-ssd_avg / (h**2 * channels)))`` with ``M = INT_MAX // (search**2 * 255)``, set
   to 0 below ``0.001 * M``. The table is built here the same way and used the same way.
5. The result is ``(sum(w * p) + sum(w) // 2) // sum(w)``, then Lab -> RGB exactly as
   ``cvtColor(COLOR_Lab2LBGR)`` (integer path).

All arithmetic is integer-exact (patch sums are integers below 2**24, held in fp32; weighted sums in
int32, as OpenCV sizes ``M`` so they fit), so the output equals OpenCV's bit for bit. Checked against
OpenCV 5.0.0 and 5.1.0 (``tests/test_nlm_torch.py`` asserts equality, not closeness): NL-means on the repo
sample, synthetic images and 144 size/strength/window combinations. fp16 is not used anywhere: squared
differences reach 65025, beyond fp16's exact integers. The result does not depend on ``chunk`` or the batch.

Memory is ``O(batch * H * W * offsets_per_chunk)``: ``chunk`` offsets are processed at once as a
strided view of the padded image (no copies of shifted images); see :func:`bytes_per_offset`.
"""

from __future__ import annotations

import functools
from typing import Protocol

import numpy as np
import torch

from workers.ops.opencv_lab import lab_to_rgb_u8, rgb_to_lab_u8

__all__ = [
    "NlmParams",
    "bytes_per_offset",
    "chunk_for_budget",
    "nlm_colored_torch",
    "nlm_torch",
    "pad_reflect101",
]

DEFAULT_CHUNK = 105
"""Offsets per step (rounded down to whole rows of the search window: 105 = 5 rows of 21)."""


class NlmParams(Protocol):
    """Anything with the NL-means parameters, e.g. :class:`workers.ops.denoise.DenoiseSpec`."""

    h: float
    h_color: float
    template: int
    search: int


def _reflect101_index(length: int, border: int, device: torch.device) -> torch.Tensor:
    """Source index of each padded position, as OpenCV's ``borderInterpolate(BORDER_REFLECT_101)``.

    Works for any border, also wider than the image (reflects repeatedly); a 1-pixel side repeats.
    """
    pos = torch.arange(-border, length + border, device=device)
    if length == 1:
        return torch.zeros_like(pos)
    period = 2 * (length - 1)
    pos = pos.remainder(period)
    return torch.where(pos >= length, period - pos, pos)


def pad_reflect101(x: torch.Tensor, border: int) -> torch.Tensor:
    """Pad ``N x C x H x W`` by ``border`` on every side like ``copyMakeBorder(BORDER_REFLECT_101)``."""
    rows = _reflect101_index(x.shape[-2], border, x.device)
    cols = _reflect101_index(x.shape[-1], border, x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


@functools.lru_cache(maxsize=32)
def _weight_table_np(h: float, channels: int, template: int, search: int) -> tuple[np.ndarray, int]:
    """OpenCV's ``almost_dist2weight_`` for ``DistSquared`` and the shift that indexes it."""
    tsq = template * template
    shift = (tsq - 1).bit_length()  # getNearestPowerOf2: smallest p with 2**p >= tsq
    multiplier = (1 << shift) / tsq
    fixed_point_mult = np.iinfo(np.int32).max // (search * search * 255)
    max_dist = 255 * 255 * channels
    size = int(max_dist / multiplier + 1)
    dist = np.arange(size, dtype=np.float64) * multiplier
    with np.errstate(all="ignore"):  # h = 0 divides by zero; a huge h overflows float to inf, as in C++
        hh = np.float32(h)
        denominator = np.float64(np.float32(hh * hh) * np.float32(channels))  # float math, as in C++
        w = np.exp(-dist / denominator)
    w = np.where(np.isnan(w), 1.0, w)  # h == 0: only exact matches (0/0 -> weight 1)
    weight = np.rint(fixed_point_mult * w)
    weight[weight < 0.001 * fixed_point_mult] = 0
    return weight.astype(np.int32), shift


@functools.lru_cache(maxsize=32)
def _weight_table(h: float, channels: int, template: int, search: int, device: torch.device) -> tuple[torch.Tensor, int]:
    table, shift = _weight_table_np(h, channels, template, search)
    return torch.from_numpy(table).to(device), shift


def _shifted_views(padded: torch.Tensor, size: tuple[int, int], first: tuple[int, int], count: int) -> torch.Tensor:
    """All ``count x count`` shifts of ``size`` windows of ``padded`` as one strided view (no copy).

    ``view[dy, dx, n, c, y, x] = padded[n, c, first[0] + dy + y, first[1] + dx + x]``.
    """
    n, c, _, _ = padded.shape
    sn, sc, sy, sx = padded.stride()
    offset = padded.storage_offset() + first[0] * sy + first[1] * sx
    return padded.as_strided((count, count, n, c, *size), (sy, sx, sn, sc, sy, sx), offset)


def _box_sum(x: torch.Tensor, template: int) -> torch.Tensor:
    """Sums over ``template x template`` windows of the last two dims ('valid' region).

    Separable running sums of shifted slices: exact in fp32 for integer sums below 2**24, the same
    on every device (no cuDNN/TF32 convolution, no float cumsum).
    """
    if template == 1:
        return x
    h_out, w_out = x.shape[-2] - template + 1, x.shape[-1] - template + 1
    rows = x[..., :w_out] + x[..., 1 : 1 + w_out]
    for k in range(2, template):
        rows += x[..., k : k + w_out]
    out = rows[..., :h_out, :] + rows[..., 1 : 1 + h_out, :]
    for k in range(2, template):
        out += rows[..., k : k + h_out, :]
    return out


def _patch_ssd(center: torch.Tensor, candidates: torch.Tensor, template: int) -> torch.Tensor:
    """Patch SSD per offset for the channel groups ``L`` and ``a,b``: ``r x S x N x 2 x H x W`` (fp32)."""
    d = (candidates - center).square_()  # r x S x N x 3 x H' x W'
    d[:, :, :, 1] += d[:, :, :, 2]
    return _box_sum(d[:, :, :, :2], template)


def _weights(ssd: torch.Tensor, table: torch.Tensor, ab_start: int, shift: int) -> torch.Tensor:
    """Integer weights exactly as OpenCV looks them up: ``ssd >> shift`` indexes the group's table.

    ``table`` is the ``L`` table followed by the ``a,b`` table, which starts at ``ab_start``.
    """
    index = ssd.to(torch.int32) >> shift
    index[:, :, :, 1] += ab_start
    return table.index_select(0, index.reshape(-1)).view(index.shape)


def _accumulate(weights: torch.Tensor, pixels: torch.Tensor, estimate: torch.Tensor, weight_sum: torch.Tensor) -> None:
    """Add ``sum(w * p)`` per channel and ``sum(w)`` per group over this chunk's offsets (int32, exact)."""
    estimate[:, :1] += (weights[:, :, :, :1] * pixels[:, :, :, :1]).sum(dim=(0, 1), dtype=torch.int32)
    estimate[:, 1:] += (weights[:, :, :, 1:] * pixels[:, :, :, 1:]).sum(dim=(0, 1), dtype=torch.int32)
    weight_sum += weights.sum(dim=(0, 1), dtype=torch.int32)


def _nlm_lab(padded: torch.Tensor, table: torch.Tensor, ab_start: int, shift: int, t_half: int, s_half: int,
             chunk: int) -> torch.Tensor:
    """Denoise uint8 Lab, ``N x 3 x (H + 2b) x (W + 2b)`` already padded by ``b = s_half + t_half``, into
    ``N x 3 x H x W``: ``L`` and ``a,b`` each with its part of the weight ``table``.

    Each output pixel reads only its padded neighbourhood, so any window of a padded image gives
    exactly the pixels of the whole image's result there: that is what tiling relies on.
    Tensors in, tensor out, no Python-side caches: the part worth ``torch.compile`` (exact either way).
    """
    border = s_half + t_half
    n, height, width = padded.shape[0], padded.shape[2] - 2 * border, padded.shape[3] - 2 * border
    search = 2 * s_half + 1
    padded = padded.float().contiguous()

    ext = (height + 2 * t_half, width + 2 * t_half)  # the region the patch sums read
    # Centre patches and, for each offset, the candidate patches and candidate pixels.
    center = padded[:, :, s_half : s_half + ext[0], s_half : s_half + ext[1]]
    candidates = _shifted_views(padded, ext, (0, 0), search)
    pixels = _shifted_views(padded.to(torch.int32), (height, width), (t_half, t_half), search)

    estimate = torch.zeros((n, 3, height, width), dtype=torch.int32, device=padded.device)
    weight_sum = torch.zeros((n, 2, height, width), dtype=torch.int32, device=padded.device)
    rows = max(1, chunk // search)
    for top in range(0, search, rows):
        ssd = _patch_ssd(center, candidates[top : top + rows], 2 * t_half + 1)
        weights = _weights(ssd, table, ab_start, shift)
        del ssd
        _accumulate(weights, pixels[top : top + rows], estimate, weight_sum)

    ws = weight_sum[:, [0, 1, 1]].long()
    return ((estimate.long() + ws // 2) // ws).clamp_(0, 255).to(torch.uint8)


def _nlm_lab_tiled(lab: torch.Tensor, table: torch.Tensor, ab_start: int, shift: int, t_half: int, s_half: int,
                   chunk: int, tile: int | None) -> torch.Tensor:
    """:func:`_nlm_lab` of the whole ``N x 3 x H x W`` Lab image, ``tile x tile`` output pixels at a time
    (None: in one piece). The image is padded once, as a whole, so every tile sees exactly the
    neighbourhood the untiled pass sees: the result does not depend on ``tile``."""
    border = s_half + t_half
    padded = pad_reflect101(lab, border)  # uint8: a quarter of the float copy each tile makes of its part
    _, _, height, width = lab.shape
    if tile is None or (tile >= height and tile >= width):
        return _nlm_lab(padded, table, ab_start, shift, t_half, s_half, chunk)
    out = torch.empty_like(lab)
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            bottom, right = min(top + tile, height), min(left + tile, width)
            window = padded[:, :, top : bottom + 2 * border, left : right + 2 * border]
            out[:, :, top:bottom, left:right] = _nlm_lab(window, table, ab_start, shift, t_half, s_half, chunk)
    return out


def bytes_per_offset(batch: int, height: int, width: int, template: int = 7) -> int:
    """Peak memory of one search offset's temporaries in a chunk (multiply by the offsets per chunk).

    The fp32 squared differences over the template-padded image (3 channels) and the first box-sum
    pass (2 channel groups) dominate; then sums, indices and weights on ``H x W``. Measured on CPU:
    1.25 MiB per offset for one 256x160 image; this returns 1.45 MiB, a margin for allocator slack.
    """
    pad = 2 * (template // 2)
    return batch * 4 * (5 * (height + pad) * (width + pad) + 4 * height * width)


def chunk_for_budget(budget_bytes: int, batch: int, height: int, width: int, template: int = 7, search: int = 21) -> int:
    """The largest ``chunk`` (whole rows of the search window, at least one) whose temporaries fit the budget."""
    rows = budget_bytes // (bytes_per_offset(batch, height, width, template) * search)
    return int(min(max(rows, 1), search)) * search


def nlm_colored_torch(
    images: torch.Tensor,
    h: float = 7,
    h_color: float = 7,
    template: int = 7,
    search: int = 21,
    chunk: int = DEFAULT_CHUNK,
    tile: int | None = None,
) -> torch.Tensor:
    """``cv2.fastNlMeansDenoisingColored`` for a batch: ``N x H x W x 3`` uint8 RGB in, same out.

    Runs where ``images`` lives (CPU or CUDA) and returns on that device. ``chunk`` is how many
    search offsets are processed at once (rounded down to whole rows of the search window, at least
    one row); memory grows linearly with it (:func:`bytes_per_offset`), speed saturates early.
    ``tile`` denoises ``tile x tile`` pixels at a time (None: the whole image), so memory is bounded
    by the tile, not the image (:func:`bytes_per_offset` of the tile). The result equals OpenCV's on
    the same image (given as BGR), bit for bit, whatever ``chunk`` and ``tile``.

    Raises:
        ValueError: wrong shape or dtype, or windows that are not odd and positive.
    """
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != torch.uint8:
        raise ValueError(f"expected N x H x W x 3 uint8 RGB, got {tuple(images.shape)} {images.dtype}")
    if template < 1 or search < 1 or template % 2 == 0 or search % 2 == 0:
        raise ValueError(f"template and search windows must be odd and positive, got {template}, {search}")
    if h < 0 or h_color < 0 or chunk < 1 or (tile is not None and tile < 1):
        raise ValueError(f"h, h_color must be >= 0, chunk and tile >= 1, got {h}, {h_color}, {chunk}, {tile}")
    if images.shape[0] == 0 or images.shape[1] == 0 or images.shape[2] == 0:
        return images.clone()
    t_half, s_half = template // 2, search // 2
    table_l, shift = _weight_table(float(h), 1, template, search, images.device)
    table_ab, _ = _weight_table(float(h_color), 2, template, search, images.device)
    with torch.inference_mode():
        lab = rgb_to_lab_u8(images).permute(0, 3, 1, 2)
        clean = _nlm_lab_tiled(lab, torch.cat([table_l, table_ab]), table_l.numel(), shift, t_half, s_half, chunk, tile)
        return lab_to_rgb_u8(clean.permute(0, 2, 3, 1).contiguous())


def nlm_torch(rgb: np.ndarray, params: NlmParams, device: str | torch.device = "cpu") -> np.ndarray:
    """One ``H x W x 3`` uint8 RGB image in, its denoised version out (numpy), computed on ``device``.

    ``params`` is anything with ``h``, ``h_color``, ``template``, ``search`` (e.g. ``DenoiseSpec``).
    """
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected H x W x 3 uint8 RGB, got {rgb.shape} {rgb.dtype}")
    batch = torch.from_numpy(np.ascontiguousarray(rgb)).to(device).unsqueeze(0)
    out = nlm_colored_torch(batch, params.h, params.h_color, params.template, params.search)
    return out[0].cpu().numpy()
