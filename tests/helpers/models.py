"""Random-weight checkpoints of the shipped architectures, and a stub upscaler, so no test needs a real model."""

from __future__ import annotations

from pathlib import Path

import torch

from workers.ops.upscale import TilePolicy, Upscaler


def nearest_x4(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.interpolate(x, scale_factor=4, mode="nearest")


def make_random_rrdb(path: Path, blocks: int = 2) -> Path:
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    model = ESRGAN(in_nc=3, out_nc=3, num_filters=64, num_blocks=blocks, scale=4)
    torch.save({"params_ema": model.state_dict()}, path)
    return path


def make_random_compact(path: Path, num_conv: int = 4) -> Path:
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(0)
    model = Compact(num_in_ch=3, num_out_ch=3, num_feat=16, num_conv=num_conv, upscale=4)
    torch.save({"params": model.state_dict()}, path)
    return path


class OverflowsInFp16(torch.nn.Module):
    """x4 nearest, scaled up and back down: fine in fp32, +inf in fp16 above 0.07 (fp16 ends at 65504).

    It refuses inputs whose sides are not multiples of 8, as architectures with size requirements
    do: a call that skipped spandrel's padding would fail here."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[2] % 8 == 0 and x.shape[3] % 8 == 0, f"unpadded input {tuple(x.shape)}"
        return nearest_x4(x) * 1e6 / 1e6


def stub_upscaler(dtype: torch.dtype) -> Upscaler:
    """:class:`OverflowsInFp16` in spandrel's real wrapper (which pads, calls, and clamps in place)."""
    from spandrel import ArchId, Architecture, ImageModelDescriptor, SizeRequirements

    model = OverflowsInFp16().to(dtype)

    class Overflowing(Architecture):
        def load(self, state_dict):  # never loads a file
            raise NotImplementedError

    architecture = Overflowing(id=ArchId("overflows"), detect=lambda state: False, name="Overflows")
    descriptor = ImageModelDescriptor(
        model,
        {},
        architecture,
        "SR",
        [],
        supports_half=True,
        supports_bfloat16=True,
        scale=4,
        input_channels=3,
        output_channels=3,
        size_requirements=SizeRequirements(multiple_of=8),
    )
    return Upscaler(descriptor, torch.device("cpu"), dtype, TilePolicy())
