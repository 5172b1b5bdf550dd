"""OpenCV's 8-bit CIELAB conversions (``cvtColor`` with ``COLOR_LBGR2Lab`` / ``COLOR_Lab2LBGR``) in
PyTorch, on any device, equal to OpenCV's bit for bit.

It follows ``modules/imgproc/src/color_lab.cpp`` step by step: *linear* RGB (no sRGB gamma), an
integer matrix and a cube-root lookup table; ``L*255/100``, ``a + 128``, ``b + 128``; the inverse on
OpenCV's integer path. All arithmetic is int32, so the result does not depend on the device. Checked
against OpenCV 5.0.0 and 5.1.0 on all 2**24 inputs; ``tests/test_opencv_lab.py`` asserts equality, not
closeness, on 65536 random colours and the known corner cases. :mod:`workers.ops.nlm_torch` denoises
in this colour space.
"""

from __future__ import annotations

import functools
import struct

import numpy as np
import torch

__all__ = ["lab_to_rgb_u8", "rgb_to_lab_u8"]

# -- OpenCV's constants (color_lab.cpp stores them as raw doubles; so do we) ----------------------------


def _doubles(*raw: int) -> tuple[float, ...]:
    return tuple(struct.unpack(">d", value.to_bytes(8, "big"))[0] for value in raw)


# The 3x3 matrices keep one row a line.
# fmt: off
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
# fmt: on
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
    return {
        name: torch.from_numpy(table).to(device=device, dtype=torch.int32) for name, table in _lab_tables_np().items()
    }


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
