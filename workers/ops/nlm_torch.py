"""OpenCV's colored NL-means (``cv2.fastNlMeansDenoisingColored``) in PyTorch, batched, on any device.

It follows OpenCV's own code step by step (``modules/photo/src/denoising.cpp``,
``fast_nlmeans_denoising_invoker*.hpp``, ``modules/imgproc/src/color_lab.cpp``), so that a GPU worker
can denoise what took ~15 CPU cores of OpenCV:

1. RGB -> 8-bit CIELAB exactly as ``cvtColor(COLOR_LBGR2Lab)``: *linear* RGB (no sRGB gamma), integer
   matrix, cube-root lookup table; ``L*255/100``, ``a + 128``, ``b + 128``.
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
OpenCV 5.0.0 and 5.1.0 (``tests/test_nlm_torch.py`` asserts equality, not closeness): both Lab conversions on all 2**24 inputs, NL-means on the repo sample, synthetic images
and 144 size/strength/window combinations. fp16 is not used anywhere: squared differences reach
65025, beyond fp16's exact integers. The result does not depend on ``chunk`` or the batch.

Memory is ``O(batch * H * W * offsets_per_chunk)``: ``chunk`` offsets are processed at once as a
strided view of the padded image (no copies of shifted images); see :func:`bytes_per_offset`.
"""

from __future__ import annotations

import functools
import struct
from typing import Protocol

import numpy as np
import torch

__all__ = [
    "NlmParams",
    "bytes_per_offset",
    "chunk_for_budget",
    "lab_to_rgb_u8",
    "nlm_colored_torch",
    "nlm_torch",
    "pad_reflect101",
    "rgb_to_lab_u8",
]

DEFAULT_CHUNK = 105
"""Offsets per step (rounded down to whole rows of the search window: 105 = 5 rows of 21)."""


class NlmParams(Protocol):
    """Anything with the NL-means parameters, e.g. :class:`workers.ops.denoise.DenoiseSpec`."""

    h: float
    h_color: float
    template: int
    search: int


# -- OpenCV's constants (color_lab.cpp stores them as raw doubles; so do we) ----------------------------


def _doubles(*raw: int) -> tuple[float, ...]:
    return tuple(struct.unpack(">d", value.to_bytes(8, "big"))[0] for value in raw)


_SRGB2XYZ_D65 = _doubles(  # 0.412453 0.357580 0.180423 / 0.212671 0.715160 0.072169 / 0.019334 0.119193 0.950227
    0x3FDA65A14488C60D, 0x3FD6E297396D0918, 0x3FC71819D2391D58,
    0x3FCB38CDA6E75FF6, 0x3FE6E297396D0918, 0x3FB279AAE6C8F755,
    0x3F93CC4AC6CDAF4B, 0x3FBE836EB4E98138, 0x3FEE68427418D691,
)
_XYZ2SRGB_D65 = _doubles(  # 3.240479 -1.53715 -0.498535 / -0.969256 1.875991 0.041556 / 0.055648 -0.204043 1.057311
    0x4009EC804102FF8F, 0xBFF8982A9930BE0E, 0xBFDFE7FF583A53B9,
    0xBFEF042528AE74F3, 0x3FFE040F23897204, 0x3FA546D3F9E7B80B,
    0x3FAC7DE5082CF52C, 0xBFCA1E14BDFD2631, 0x3FF0EABEF06B3786,
)
_D65 = _doubles(0x3FEE6A22B3892EE8, 0x3FF0000000000000, 0x3FF16B8950763A19)  # 0.950456 1 1.088754

_LAB_SHIFT = 12  # xyz_shift
_GAMMA_SHIFT = 3
_LAB_SHIFT2 = _LAB_SHIFT + _GAMMA_SHIFT
_BASE = 1 << 14  # LUT_BASE / Lab2RGBinteger::BASE
_MIN_AB = -8145  # minABvalue
_INV_SHIFT = _LAB_SHIFT + 14 - 12  # Lab2RGBinteger::shift
# OpenCV's softfloat cbrt() returns one ulp less than the correctly rounded cube root for this entry,
# which then rounds half-to-even the other way. Found by comparing all 2**24 colors with cv2.
_CBRT_TAB_OVERRIDES = {324: 17745}


@functools.lru_cache(maxsize=1)
def _lab_tables_np() -> dict[str, np.ndarray]:
    """OpenCV's 8-bit Lab tables (``initLabTabs``), float32 steps done in float32 as OpenCV does."""
    f32 = np.float32
    # RGB -> XYZ/whitepoint, scaled by 2**12, columns in R, G, B order.
    fwd = [[round((1 << _LAB_SHIFT) * _SRGB2XYZ_D65[i * 3 + j] / _D65[i]) for j in range(3)] for i in range(3)]
    # XYZ*whitepoint -> R, G, B, scaled by 2**12.
    inv = [[round((1 << _LAB_SHIFT) * _XYZ2SRGB_D65[r * 3 + k] * _D65[k]) for k in range(3)] for r in range(3)]

    # LabCbrtTab_b: f(x) = cbrt(x) or 7.787x + 16/116, x = i / (255 * 8), scaled by 2**15.
    lthresh, lscale, lbias = f32(216) / f32(24389), f32(841) / f32(108), f32(16) / f32(116)
    x = (f32(1) / (f32(255) * f32(1 << _GAMMA_SHIFT))) * np.arange(256 * 3 // 2 * (1 << _GAMMA_SHIFT), dtype=f32)
    linear = (x.astype(np.float64) * float(lscale) + float(lbias)).astype(f32)  # mulAdd: one rounding
    cbrt = np.cbrt(x.astype(np.float64)).astype(f32)
    cbrt_tab = np.rint(f32(1 << _LAB_SHIFT2) * np.where(x < lthresh, linear, cbrt)).astype(np.int64)
    for index, value in _CBRT_TAB_OVERRIDES.items():
        cbrt_tab[index] = value

    # LabToYF_b: L (0..255) -> y and f(y), scaled by 2**14.
    y_fy = np.zeros((256, 2), np.int64)
    for i in range(256):
        if i <= 20:
            y = np.rint(f32(i * _BASE * 20 * 9) / f32(17 * 29 * 29 * 29))
            fy = np.rint(f32(_BASE) * (f32(16) / f32(116) + f32(i * 5) / f32(3 * 17 * 29)))
        else:
            fy_exact = f32(i * 100 * _BASE) / f32(255 * 116) + f32(16 * _BASE) / f32(116)
            fy = np.rint(fy_exact)
            y = np.rint(fy_exact * fy_exact * fy_exact / f32(_BASE * _BASE))
        y_fy[i] = (int(y), int(fy))

    # abToXZ_b: f -> f**3 or (f - 16/116) / 7.787 (C integer division truncates toward zero).
    f = np.arange(_MIN_AB, _BASE * 9 // 4 + _MIN_AB, dtype=np.int64)
    low_num = f * 108
    low = np.where(low_num >= 0, low_num // 841, -(-low_num // 841)) - (_BASE * 16 // 116 * 108 // 841)
    ab_to_xz = np.where(f <= 3390, low, f * f // _BASE * f // _BASE)

    inv_gamma = (255 * np.arange(1 << 12, dtype=np.int64)) >> 12  # linearInvGammaTab_b: trunc(255 * i / 4096)
    return {
        "fwd": np.array(fwd, np.int64),
        "inv": np.array(inv, np.int64),
        "cbrt": cbrt_tab,
        "y": y_fy[:, 0].copy(),
        "fy": y_fy[:, 1].copy(),
        "ab_to_xz": ab_to_xz,
        "inv_gamma": inv_gamma,
    }


@functools.lru_cache(maxsize=8)
def _lab_tables(device: torch.device) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(table).to(device=device, dtype=torch.int32) for name, table in _lab_tables_np().items()}


def _descale(x: torch.Tensor, shift: int) -> torch.Tensor:
    """OpenCV's ``CV_DESCALE``: round to nearest, arithmetic shift."""
    return (x + (1 << (shift - 1))) >> shift


def _lookup(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` for int32 ``index`` of any shape."""
    return table.index_select(0, index.reshape(-1)).view(index.shape)


def _dot(row: np.ndarray, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """One row of an integer 3x3 matrix times ``(x, y, z)`` (CUDA has no integer matmul)."""
    c0, c1, c2 = (int(c) for c in row)
    return x * c0 + y * c1 + z * c2


def _check_u8_last3(t: torch.Tensor, what: str) -> None:
    if t.dtype != torch.uint8 or t.ndim < 1 or t.shape[-1] != 3:
        raise ValueError(f"{what}: expected ... x 3 uint8, got {tuple(t.shape)} {t.dtype}")


def rgb_to_lab_u8(rgb: torch.Tensor) -> torch.Tensor:
    """``... x 3`` uint8 RGB -> ``... x 3`` uint8 Lab, equal to ``cvtColor(bgr, COLOR_LBGR2Lab)``.

    Linear RGB (no gamma), ``L`` scaled to 0..255, ``a`` and ``b`` offset by 128. int32 throughout.
    """
    _check_u8_last3(rgb, "rgb_to_lab_u8")
    fwd, tab = _lab_tables_np()["fwd"], _lab_tables(rgb.device)
    r, g, b = (c << _GAMMA_SHIFT for c in rgb.to(torch.int32).unbind(-1))  # linearGammaTab_b
    fx, fy, fz = (_lookup(tab["cbrt"], _descale(_dot(fwd[i], r, g, b), _LAB_SHIFT)) for i in range(3))
    lscale = (116 * 255 + 50) // 100
    lshift = -((16 * 255 * (1 << _LAB_SHIFT2) + 50) // 100)
    lum = _descale(lscale * fy + lshift, _LAB_SHIFT2)
    a = _descale(500 * (fx - fy) + (128 << _LAB_SHIFT2), _LAB_SHIFT2)
    b = _descale(200 * (fy - fz) + (128 << _LAB_SHIFT2), _LAB_SHIFT2)
    return torch.stack([lum, a, b], dim=-1).clamp_(0, 255).to(torch.uint8)


def lab_to_rgb_u8(lab: torch.Tensor) -> torch.Tensor:
    """``... x 3`` uint8 Lab -> ``... x 3`` uint8 RGB, equal to ``cvtColor(lab, COLOR_Lab2LBGR)`` (as RGB).

    Like OpenCV's linear path, the largest value it produces is 254. int32 throughout.
    """
    _check_u8_last3(lab, "lab_to_rgb_u8")
    inv, tab = _lab_tables_np()["inv"], _lab_tables(lab.device)
    lum, a, b = lab.to(torch.int32).unbind(-1)
    y, fy = _lookup(tab["y"], lum), _lookup(tab["fy"], lum)
    a_div = ((a * (5 * 53687) + (1 << 7)) >> 13) - 128 * _BASE // 500
    b_div = ((b * 41943 + (1 << 4)) >> 9) - 128 * _BASE // 200 + 1
    x = _lookup(tab["ab_to_xz"], fy + a_div - _MIN_AB)
    z = _lookup(tab["ab_to_xz"], fy - b_div - _MIN_AB)
    top = (1 << 12) - 1
    rgb = [_lookup(tab["inv_gamma"], _descale(_dot(inv[i], x, y, z), _INV_SHIFT).clamp_(0, top)) for i in range(3)]
    return torch.stack(rgb, dim=-1).to(torch.uint8)


# -- NL-means core ------------------------------------------------------------------------------------


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
    return _lookup(table, index)


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
