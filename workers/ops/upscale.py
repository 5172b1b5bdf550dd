"""4x super-resolution with any checkpoint spandrel can load (Real-ESRGAN by default).

* :func:`load_upscaler` loads and checks a model once; the result is immutable and safe to share.
* :meth:`Upscaler.upscale` maps a batch of same-size uint8 RGB images to their 4x versions. It owns
  dtype conversion, channel order, clamping and rounding, and falls back from a whole batch to
  single images to tiles when the device runs out of memory. Each result (a batch, or one tile of a
  large image) is rounded to uint8 and copied straight into the one host array returned: the
  float output of a large (tiled) image never exists whole, on the device or on the host.
* :func:`tiled_forward` is the tiling itself, a pure function tested against the untiled result.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workers.errors import DeviceOutOfMemoryError, UnsupportedModelError
from workers.io.weights import file_sha256
from workers.ops.upscalers import ChannelOrder, TilePolicy

logger = logging.getLogger(__name__)

Forward = Callable[[torch.Tensor], torch.Tensor]
Finish = Callable[[torch.Tensor], torch.Tensor]  # a model output (or a tile of one) as it is to be stored
REQUIRED_SCALE = 4

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return _DTYPES[precision]


def load_descriptor(path: Path | str) -> Any:
    """Load a checkpoint with spandrel and check it is a 3-channel 4x image super-resolution model.

    Returns the ``spandrel.ImageModelDescriptor`` on the CPU, in fp32, in whatever mode it loads.

    Raises:
        UnsupportedModelError: spandrel cannot load the file (missing, truncated, corrupt, unknown
            architecture), or it is not a 4x RGB SR model; the message names the file.
    """
    import spandrel

    path = Path(path)
    try:
        descriptor = spandrel.ModelLoader().load_from_file(path)
    except Exception as exc:  # noqa: BLE001 - unpickling/zip/safetensors each raise their own types
        raise UnsupportedModelError(f"{path}: not a checkpoint spandrel can load ({type(exc).__name__}: {exc})") from None
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise UnsupportedModelError(f"{path}: {descriptor.architecture.name} is not an image-to-image model")
    if descriptor.scale != REQUIRED_SCALE:
        raise UnsupportedModelError(f"{path}: model scale is x{descriptor.scale}, this pipeline needs x{REQUIRED_SCALE}")
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise UnsupportedModelError(
            f"{path}: model maps {descriptor.input_channels} to {descriptor.output_channels} channels, need 3 to 3"
        )
    return descriptor


def load_upscaler(path: Path | str, device: str = "auto", precision: str = "auto", tiles: TilePolicy | None = None,
                  source: str = "") -> Upscaler:
    """Load a checkpoint (:func:`load_descriptor`) onto ``device`` in ``precision``, ready to upscale.

    ``source`` says where the file came from, for reports (default ``file:<path>``).

    Raises:
        UnsupportedModelError: as :func:`load_descriptor`.
    """
    path = Path(path)
    descriptor = load_descriptor(path)
    torch_device = resolve_device(device)
    dtype = resolve_dtype(precision, torch_device)
    if (dtype is torch.float16 and not descriptor.supports_half) or (
        dtype is torch.bfloat16 and not descriptor.supports_bfloat16
    ):
        logger.warning("%s does not support %s; using fp32", descriptor.architecture.name, dtype)
        dtype = torch.float32
    descriptor.eval().to(torch_device)
    descriptor.model.to(dtype=dtype)
    if torch_device.type == "cuda":
        # Convolutions run fastest on NHWC tensors with cuDNN's fp16 kernels.
        descriptor.model.to(memory_format=torch.channels_last)
    logger.info("loaded %s (%s) on %s as %s", path.name, descriptor.architecture.name, torch_device, dtype)
    return Upscaler(descriptor, torch_device, dtype, tiles or TilePolicy(), source or f"file:{path.resolve()}", file_sha256(path))


@dataclass(frozen=True)
class Upscaler:
    """A loaded model plus how to run it. Holds no per-call state."""

    descriptor: object  # spandrel.ImageModelDescriptor
    device: torch.device
    dtype: torch.dtype
    tiles: TilePolicy
    source: str = ""  # where the checkpoint came from ("file:..." or "hf:repo/file@rev")
    sha256: str = ""  # of the checkpoint file
    _fallback: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    _fallback_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def scale(self) -> int:
        return REQUIRED_SCALE

    @property
    def architecture(self) -> str:
        return self.descriptor.architecture.name

    def describe(self) -> dict[str, str]:
        return {"model": self.source, "model_sha256": self.sha256, "device": str(self.device)}

    def upscale(self, images: np.ndarray, channel_order: ChannelOrder = "rgb", tta: bool = False) -> np.ndarray:
        """``N x H x W x 3`` uint8 RGB -> ``N x 4H x 4W x 3`` uint8 RGB.

        ``channel_order="bgr"`` feeds the network BGR and flips the output back, as the seed did.
        ``tta`` averages the outputs of the 8 flips and rotations (x8 self-ensemble) in float,
        before rounding: about 8x the compute for a steadier estimate.

        Raises:
            DeviceOutOfMemoryError: even a single tile does not fit on the device.
        """
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"expected N x H x W x 3 uint8 images, got {images.shape} {images.dtype}")
        n, h, w, _ = images.shape
        bgr = channel_order == "bgr"
        x = torch.from_numpy(np.require(images[..., ::-1] if bgr else images, requirements=["C", "W"]))
        x = x.to(self.device).permute(0, 3, 1, 2).float().div_(255.0).to(self.dtype)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        result = np.empty((n, h * self.scale, w * self.scale, 3), np.uint8)
        target = torch.from_numpy(result).permute(0, 3, 1, 2)  # N x C x H x W view of the NHWC host array
        finish = _to_rgb_uint8 if not bgr else _bgr_to_rgb_uint8
        with torch.inference_mode():
            if tta:
                target.copy_(finish(self._self_ensemble(x)))
            else:
                self._forward_resilient(x, target, finish)
        return result

    def _self_ensemble(self, x: torch.Tensor) -> torch.Tensor:
        """The mean, in fp32, of the outputs for the 8 dihedral transforms of ``x``, each undone."""
        total: torch.Tensor | None = None
        for flip in (False, True):
            for turns in range(4):
                t = torch.rot90(x.flip(3) if flip else x, turns, dims=(2, 3))
                n, c, h, w = t.shape
                y = t.new_empty((n, c, h * self.scale, w * self.scale), dtype=torch.float32)
                self._forward_resilient(t, y, torch.Tensor.float)
                y = torch.rot90(y, -turns, dims=(2, 3))
                y = y.flip(3) if flip else y
                total = y if total is None else total.add_(y)
        assert total is not None
        return total.div_(8)

    def _model_forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.descriptor(x)
        if x.dtype == torch.float16 and not torch.isfinite(y).all():
            # fp16 RRDB-type models overflow to NaN or inf (black or white output) on some inputs.
            logger.warning("non-finite fp16 output for a %dx%d batch; recomputing it in fp32", x.shape[3], x.shape[2])
            y = self._fp32_model()(x.float())
        return y

    def _fp32_model(self) -> Any:
        """An fp32 copy of the model on the same device, made on first need and kept."""
        with self._fallback_lock:
            if "fp32" not in self._fallback:
                self._fallback["fp32"] = copy.deepcopy(self.descriptor.model).float()
            return self._fallback["fp32"]

    def _forward_resilient(self, x: torch.Tensor, out: torch.Tensor, finish: Finish) -> None:
        """``finish(model(x))`` into ``out`` (N x C x 4H x 4W, any device and strides): the whole batch
        if it fits; else halves; else one image in tiles, each tile finished and stored on its own.

        Raises:
            DeviceOutOfMemoryError: even a single tile does not fit on the device.
        """
        n, _, h, w = x.shape
        if h * w > self.tiles.max_pixels:
            for i in range(n):
                self._tiled(x[i : i + 1], out[i : i + 1], finish)
            return
        try:
            out.copy_(finish(self._model_forward(x)))
        except torch.OutOfMemoryError:
            _release_cached_memory(self.device)
            if n > 1:
                logger.warning("out of memory on a batch of %d %dx%d images; splitting", n, w, h)
                half = n // 2
                self._forward_resilient(x[:half], out[:half], finish)
                self._forward_resilient(x[half:], out[half:], finish)
                return
            logger.warning("out of memory on one %dx%d image; tiling", w, h)
            self._tiled(x, out, finish)

    def _tiled(self, x: torch.Tensor, out: torch.Tensor, finish: Finish) -> None:
        size, overlap = self.tiles.size, self.tiles.overlap
        while True:
            try:
                tiled_forward(lambda tile: finish(self._model_forward(tile)), x, size, overlap, self.scale, out)
                return
            except torch.OutOfMemoryError:
                _release_cached_memory(self.device)
                if size // 2 <= 2 * overlap:
                    raise DeviceOutOfMemoryError(
                        f"out of memory even with {size}px tiles on {self.device}"
                    ) from None
                size //= 2
                logger.warning("out of memory while tiling; retrying with %dpx tiles", size)


def _to_rgb_uint8(y: torch.Tensor) -> torch.Tensor:
    """Model output in [0, 1] to uint8, rounded (in fp32: fp16 cannot hold x.5 steps near 255)."""
    return y.float().clamp_(0, 1).mul_(255.0).round_().to(torch.uint8)


def _bgr_to_rgb_uint8(y: torch.Tensor) -> torch.Tensor:
    """:func:`_to_rgb_uint8` of an output the network made in BGR order, channels flipped back."""
    return _to_rgb_uint8(y).flip(1)


def _release_cached_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def tiled_forward(forward: Forward, x: torch.Tensor, tile: int, overlap: int, scale: int,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """Run ``forward`` over ``x`` (N x C x H x W) tile by tile and stitch the outputs into ``out``.

    Each ``tile x tile`` core is processed with ``overlap`` pixels of context on every side (less at
    the image border) and only the core's output is kept, so seams see the same context as the
    untiled pass up to the overlap. ``out`` (N x C x sH x sW, any dtype, device and strides: e.g. a
    view of a host array) defaults to a new tensor like ``x``; it is returned.
    """
    if tile <= 0 or overlap < 0:
        raise ValueError(f"tile must be > 0 and overlap >= 0, got {tile}, {overlap}")
    n, c, h, w = x.shape
    out = x.new_empty((n, c, h * scale, w * scale)) if out is None else out
    for top in range(0, h, tile):
        for left in range(0, w, tile):
            bottom, right = min(top + tile, h), min(left + tile, w)
            y0, x0 = max(top - overlap, 0), max(left - overlap, 0)
            y1, x1 = min(bottom + overlap, h), min(right + overlap, w)
            result = forward(x[:, :, y0:y1, x0:x1])
            oy, ox = (top - y0) * scale, (left - x0) * scale
            out[:, :, top * scale : bottom * scale, left * scale : right * scale] = result[
                :, :, oy : oy + (bottom - top) * scale, ox : ox + (right - left) * scale
            ]
    return out
