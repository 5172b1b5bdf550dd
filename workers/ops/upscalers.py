"""Upscalers by name: one table from the name a run's pipeline records to how to get one.

An upscaler maps ``N x H x W x 3`` uint8 RGB images of one size to their ``N x 4H x 4W x 3``
versions (:class:`ImageUpscaler`). The table says, for each name, its scale, the colour order its
weights were trained in, which checkpoint it runs (the worker's ``WEIGHTS``, which then goes into
the run id; the run's own trained model, named by key and hash in the manifest; or none), and where
its loader lives. The loader's module is imported only when that upscaler is used, so the CPU side
never imports torch for ``bicubic``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from workers.registry import lookup

ChannelOrder = Literal["rgb", "bgr"]
UpscalerName = Literal["model", "learned", "bicubic"]
CheckpointSource = Literal["worker", "run", "none"]


class ImageUpscaler(Protocol):
    """What the GPU stage needs from an upscaler."""

    def upscale(self, images: np.ndarray, channel_order: ChannelOrder = "rgb", tta: bool = False) -> np.ndarray:
        """``N x H x W x 3`` uint8 RGB -> ``N x 4H x 4W x 3`` uint8 RGB (``tta``: x8 self-ensemble)."""

    def describe(self) -> dict[str, str]:
        """What produced an output, for the per-image meta and the report (model, device, ...)."""


@dataclass(frozen=True)
class TilePolicy:
    """When and how to tile: above ``max_pixels`` input pixels, in ``size`` tiles with ``overlap``."""

    max_pixels: int = 1_048_576
    size: int = 256
    overlap: int = 16


@dataclass(frozen=True)
class UpscalerKind:
    """One registry entry."""

    name: str
    scale: int
    color_order: ChannelOrder  # what the weights expect; the seed's BGR feed is a per-run override
    checkpoint: CheckpointSource  # worker: WEIGHTS (part of the run id); run: the manifest's; none
    loader: str  # "module:callable"; called as loader(checkpoint_path, **options), or loader() without one

    @property
    def runs_checkpoint(self) -> bool:
        """True when it loads a model file: torch, a device, and a model that must be the right one."""
        return self.checkpoint != "none"

    def load(self, checkpoint: Path | None = None, **options: Any) -> ImageUpscaler:
        module, _, name = self.loader.partition(":")
        make: Callable[..., ImageUpscaler] = getattr(importlib.import_module(module), name)
        return make(checkpoint, **options) if self.runs_checkpoint else make()


UPSCALERS: dict[str, UpscalerKind] = {
    # The worker's checkpoint (WEIGHTS, or the Hub default): Real-ESRGAN or anything spandrel loads.
    "model": UpscalerKind("model", 4, "rgb", "worker", "workers.ops.upscale:load_upscaler"),
    # The run's own checkpoint, fine-tuned on the dataset's pairs (`producer train`), fetched by hash.
    "learned": UpscalerKind("learned", 4, "rgb", "run", "workers.ops.upscale:load_upscaler"),
    # OpenCV bicubic: the smooth PSNR baseline, no model, no torch.
    "bicubic": UpscalerKind("bicubic", 4, "rgb", "none", "workers.ops.resample:BicubicUpscaler"),
}


def upscaler_kind(name: str) -> UpscalerKind:
    """The registry entry for ``name``.

    Raises:
        ConfigError: no upscaler has that name (with the closest one as a suggestion).
    """
    return lookup("upscaler", name, UPSCALERS)
