"""Measuring a model file's :class:`~workers.ops.device.Bf16Agreement`: its competition PSNR against the
ground truth in fp32 and in bf16, on the same held-back images, once (the result is recorded by hash)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workers.io.submission import grey_subsample
from workers.ops.device import AGREEMENT_TOLERANCE_DB, Bf16Agreement, CpuCapabilities
from workers.ops.metrics import psnr
from workers.ops.upscale import Upscaler, load_descriptor
from workers.ops.upscalers import TilePolicy

Pair = tuple[np.ndarray, np.ndarray]  # (H x W x 3 input, 4H x 4W x 3 target), uint8


def mean_psnr(upscaler: Upscaler, pairs: Sequence[Pair]) -> float:
    """Mean competition PSNR (grey, every 8th value) of ``upscaler`` over ``pairs``, one image at a time."""
    return float(
        np.mean([psnr(grey_subsample(upscaler.upscale(inp[None])[0]), grey_subsample(target)) for inp, target in pairs])
    )


def descriptor_agreement(
    descriptor: Any,
    sha256: str,
    pairs: Sequence[Pair],
    measured_on: str,
    fp32_psnr: float | None = None,
    tolerance_db: float = AGREEMENT_TOLERANCE_DB,
) -> Bf16Agreement:
    """The agreement of a loaded model (a spandrel descriptor, on the CPU, left unchanged) over ``pairs``;
    ``fp32_psnr``: its fp32 score when already known (the trainer's evaluation)."""
    cpu = torch.device("cpu")
    if fp32_psnr is None:
        exact = copy.deepcopy(descriptor)
        exact.model.float().eval()
        fp32_psnr = mean_psnr(Upscaler(exact, cpu, torch.float32, TilePolicy()), pairs)
    half = copy.deepcopy(descriptor)
    half.model.to(dtype=torch.bfloat16, memory_format=torch.channels_last).eval()
    bf16_psnr = mean_psnr(Upscaler(half, cpu, torch.bfloat16, TilePolicy()), pairs)
    return Bf16Agreement(
        sha256,
        round(fp32_psnr, 5),
        round(bf16_psnr, 5),
        len(pairs),
        measured_on,
        tolerance_db,
        CpuCapabilities.detect().name,
        datetime.now(UTC).isoformat(timespec="seconds"),
    )


def file_agreement(path: Path, sha256: str, pairs: Sequence[Pair], measured_on: str) -> Bf16Agreement:
    """:func:`descriptor_agreement` of the checkpoint at ``path`` (whose sha256 is ``sha256``)."""
    return descriptor_agreement(load_descriptor(path), sha256, pairs, measured_on)
