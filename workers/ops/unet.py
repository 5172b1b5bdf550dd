"""The project's NAFNet-style U-Net for 4x super-resolution, loadable through spandrel like every other model.

spandrel's own NAFNet has no upscaling head (it restores at 1x), so this architecture is the project's:
NAFNet blocks (LayerNorm, a 1x1 expansion, a depthwise 3x3, a simple gate, simplified channel attention,
a gated feed-forward) in a U-Net at the *input* resolution, where the denoising happens, then a
``conv -> 48 channels -> PixelShuffle(4)`` head, added to a bilinear 4x of the input. The head's last
convolution starts at zero, so an untrained model is exactly bilinear.

:func:`register` adds it to ``spandrel.MAIN_REGISTRY`` (once per process): from then on
``spandrel.ModelLoader`` (and so :func:`workers.ops.upscale.load_descriptor`) loads its safetensors by
their keys, as it loads Compact or RRDB. The hyperparameters are read back from the tensors' shapes.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ARCH_ID = "LowlightUNet"
SCALE = 4
_registered = threading.Lock()
_done: list[bool] = []


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of an N x C x H x W tensor.

    Runs as ``F.layer_norm`` on an N x H x W x C view: with channels_last memory that view is
    contiguous (no copy), and autocast runs layer_norm in fp32 (a bf16 variance would lose the
    small differences a dark image is made of).
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2).to(x.dtype)


class NAFBlock(nn.Module):
    """One NAFNet block (Chen et al. 2022, "Simple Baselines for Image Restoration"): no activation
    functions, a product of two channel halves instead."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        wide = 2 * channels
        self.norm1 = LayerNorm2d(channels)
        self.conv1 = nn.Conv2d(channels, wide, 1)
        self.conv2 = nn.Conv2d(wide, wide, 3, padding=1, groups=wide)
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, channels, 1))
        self.conv3 = nn.Conv2d(channels, channels, 1)
        self.norm2 = LayerNorm2d(channels)
        self.conv4 = nn.Conv2d(channels, wide, 1)
        self.conv5 = nn.Conv2d(channels, channels, 1)
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        a, b = self.conv2(self.conv1(self.norm1(inp))).chunk(2, dim=1)
        x = a * b
        x = self.conv3(x * self.sca(x))
        y = inp + x * self.beta
        a, b = self.conv4(self.norm2(y)).chunk(2, dim=1)
        return y + self.conv5(a * b) * self.gamma


class LowlightUNet(nn.Module):
    """NAFNet U-Net at the input resolution with a 4x pixel-shuffle head over a bilinear skip.

    ``encoders[i]`` has ``enc_blocks[i]`` blocks at ``width * 2**i`` channels and ``1 / 2**i`` of the
    input's side; ``middle`` blocks run below the last level; one decoder stage per level adds the
    encoder's output back (skip connections) before its blocks (``dec_blocks`` from the deepest level up).
    Inputs are padded to a multiple of ``2 ** len(enc_blocks)`` and the padding cropped away.
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        width: int = 16,
        enc_blocks: Sequence[int] = (1, 1, 1, 8),
        middle_blocks: int = 1,
        dec_blocks: Sequence[int] = (1, 1, 1, 1),
        head_channels: int = 48,
    ) -> None:
        super().__init__()
        if len(enc_blocks) != len(dec_blocks):
            raise ValueError(
                f"one decoder stage per encoder level: {len(enc_blocks)} encoder, {len(dec_blocks)} decoder"
            )
        if head_channels % (SCALE * SCALE) or head_channels // (SCALE * SCALE) != in_channels:
            raise ValueError(f"the head's {head_channels} channels must shuffle to {in_channels} at {SCALE}x")
        self.hyperparameters: dict[str, Any] = {
            "in_channels": in_channels,
            "width": width,
            "enc_blocks": list(enc_blocks),
            "middle_blocks": middle_blocks,
            "dec_blocks": list(dec_blocks),
            "head_channels": head_channels,
        }
        self.intro = nn.Conv2d(in_channels, width, 3, padding=1)
        self.encoders, self.downs = nn.ModuleList(), nn.ModuleList()
        channels = width
        for count in enc_blocks:
            self.encoders.append(nn.Sequential(*[NAFBlock(channels) for _ in range(count)]))
            self.downs.append(nn.Conv2d(channels, 2 * channels, 2, stride=2))
            channels *= 2
        self.middle = nn.Sequential(*[NAFBlock(channels) for _ in range(middle_blocks)])
        self.ups, self.decoders = nn.ModuleList(), nn.ModuleList()
        for count in dec_blocks:
            self.ups.append(nn.Sequential(nn.Conv2d(channels, 2 * channels, 1, bias=False), nn.PixelShuffle(2)))
            channels //= 2
            self.decoders.append(nn.Sequential(*[NAFBlock(channels) for _ in range(count)]))
        self.to_head = nn.Conv2d(width, head_channels, 3, padding=1, bias=True)
        self.shuffle = nn.PixelShuffle(SCALE)
        # Zero head: the model starts as the bilinear skip of its input.
        nn.init.zeros_(self.to_head.weight)
        assert self.to_head.bias is not None
        nn.init.zeros_(self.to_head.bias)
        self.multiple = 2 ** len(enc_blocks)

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        _, _, h, w = inp.shape
        pad_h, pad_w = -h % self.multiple, -w % self.multiple
        x = F.pad(inp, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else inp
        x = self.intro(x)
        skips = []
        for encoder, down in zip(self.encoders, self.downs, strict=True):
            x = encoder(x)
            skips.append(x)
            x = down(x)
        x = self.middle(x)
        for up, decoder, skip in zip(self.ups, self.decoders, reversed(skips), strict=True):
            x = decoder(up(x) + skip)
        residual = self.shuffle(self.to_head(x))[..., : SCALE * h, : SCALE * w]
        base = F.interpolate(inp, scale_factor=SCALE, mode="bilinear", align_corners=False)
        return base + residual


def _sequence_length(state_dict: dict[str, Any], prefix: str) -> int:
    indices = {int(key[len(prefix) :].split(".", 1)[0]) for key in state_dict if key.startswith(prefix)}
    return max(indices) + 1 if indices else 0


def hyperparameters(state_dict: dict[str, Any]) -> dict[str, Any]:
    """The constructor arguments of the model whose weights are ``state_dict`` (from names and shapes)."""
    levels = _sequence_length(state_dict, "encoders.")
    return {
        "in_channels": int(state_dict["intro.weight"].shape[1]),
        "width": int(state_dict["intro.weight"].shape[0]),
        "enc_blocks": [_sequence_length(state_dict, f"encoders.{i}.") for i in range(levels)],
        "middle_blocks": _sequence_length(state_dict, "middle."),
        "dec_blocks": [_sequence_length(state_dict, f"decoders.{i}.") for i in range(levels)],
        "head_channels": int(state_dict["to_head.weight"].shape[0]),
    }


def _architecture() -> Any:
    from spandrel import ImageModelDescriptor
    from spandrel.__helpers.model_descriptor import Architecture
    from spandrel.util import KeyCondition

    class LowlightUNetArch(Architecture[LowlightUNet]):
        def __init__(self) -> None:
            super().__init__(
                id=ARCH_ID,
                name="Lowlight NAFNet U-Net",
                detect=KeyCondition.has_all(
                    "intro.weight", "to_head.weight", "encoders.0.0.beta", "middle.0.conv1.weight", "ups.0.0.weight"
                ),
            )

        def load(self, state_dict: Any) -> ImageModelDescriptor[LowlightUNet]:
            params = hyperparameters(state_dict)
            model = LowlightUNet(**params)
            return ImageModelDescriptor(
                model,
                state_dict,
                architecture=self,
                purpose="SR",
                tags=[f"{params['width']}w"],
                # fp16's range is not checked for the LayerNorm statistics; on CUDA bf16 runs instead
                supports_half=False,
                supports_bfloat16=True,
                scale=SCALE,
                input_channels=params["in_channels"],
                output_channels=params["in_channels"],
            )

    return LowlightUNetArch()


def register() -> None:
    """Add the architecture to ``spandrel.MAIN_REGISTRY`` (idempotent, thread-safe), ahead of spandrel's
    NAFNet, whose key test a U-Net with these names does not pass, but might in a later spandrel."""
    with _registered:
        if _done:
            return
        import spandrel

        spandrel.MAIN_REGISTRY.add(
            spandrel.ArchSupport.from_architecture(_architecture(), before=("NAFNet",)), ignore_duplicates=True
        )
        _done.append(True)
