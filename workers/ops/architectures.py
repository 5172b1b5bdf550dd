"""Untrained models by name: the architectures a pretraining or the capacity ladder can start from.

A name maps to a constructor of a 3-channel 4x network that spandrel loads back from its weights
(``workers.ops.unet`` registers the project's U-Net with spandrel). :func:`write_initial` saves a
seeded random initialisation as safetensors, the format every start checkpoint and shipped model has.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workers.errors import ConfigError


def _unet(width: int) -> Callable[[], Any]:
    def make() -> Any:
        from workers.ops.unet import LowlightUNet

        return LowlightUNet(width=width, enc_blocks=(1, 1, 1, 8), middle_blocks=1, dec_blocks=(1, 1, 1, 1))

    return make


def _compact(features: int, convs: int) -> Callable[[], Any]:
    def make() -> Any:
        from spandrel.architectures.Compact import Compact

        return Compact(num_in_ch=3, num_out_ch=3, num_feat=features, num_conv=convs, upscale=4)

    return make


def _span(features: int) -> Callable[[], Any]:
    def make() -> Any:
        from spandrel.architectures.SPAN import SPAN

        return SPAN(num_in_ch=3, num_out_ch=3, feature_channels=features, upscale=4)

    return make


INITIAL: dict[str, Callable[[], Any]] = {
    # NAFNet U-Net, encoder blocks 1,1,1,8, one middle block, one decoder block per level
    "unet-16": _unet(16),
    "unet-24": _unet(24),
    "unet-32": _unet(32),
    "compact-32x16": _compact(32, 16),
    "compact-64x16": _compact(64, 16),
    "compact-64x32": _compact(64, 32),
    "compact-96x16": _compact(96, 16),
    "span-48": _span(48),
}


def initial_model(name: str, seed: int = 0) -> Any:
    """A freshly initialised network of architecture ``name`` (seeded: the same weights for one seed).

    Raises:
        ConfigError: no architecture of that name (the closest is suggested).
    """
    import torch

    if name not in INITIAL:
        close = difflib.get_close_matches(name, INITIAL, n=1)
        hint = f" Did you mean {close[0]}?" if close else ""
        raise ConfigError(f"No such architecture: {name!r}; choose one of {sorted(INITIAL)}.{hint}")
    torch.manual_seed(seed)
    return INITIAL[name]()


def write_initial(name: str, path: Path, seed: int = 0) -> Path:
    """Save :func:`initial_model` as ``path`` (safetensors, fp32), loadable as a start checkpoint."""
    from safetensors.torch import save_file

    model = initial_model(name, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().float().contiguous() for k, v in model.state_dict().items()},
        str(path),
        metadata={"format": "pt"},
    )
    return path
