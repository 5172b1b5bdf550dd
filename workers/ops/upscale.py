"""4x super-resolution with any checkpoint spandrel can load (Real-ESRGAN by default).

* :func:`load_upscaler` loads and checks a model once; the result is immutable and safe to share.
* :meth:`Upscaler.upscale` maps a batch of same-size uint8 RGB images to their 4x versions. It owns
  dtype conversion, channel order, clamping and rounding, and falls back from a whole batch to
  single images to tiles when the device runs out of memory. Each result (a batch, or one tile of a
  large image) is rounded to uint8 and copied straight into the one host array returned (pinned
  memory on CUDA, copied without waiting): the float output of a large (tiled) image never exists
  whole, on the device or on the host, and TTA averages per pass, not per whole image.
* Reduced precision (fp16, bf16) is checked on the model's *raw* output, before anything clamps it:
  spandrel's wrapper clamps in place, which turns ``+inf`` into a white pixel that no later check can
  see. A pass with a non-finite value is recomputed in fp32 through the same wrapper (padding,
  crop). The checks stay on the device and are read once per call, with the result: no host
  synchronisation per pass or tile.
* Out-of-memory recovery (split, then tile) runs after the ``except`` block, so the failed pass's
  activations are freed first, and it covers every allocator failure (cuDNN's and cuBLAS's too, see
  :mod:`workers.ops.device_errors`). A broken CUDA context raises :class:`DeviceLostError`.
* :func:`tile_windows` / :func:`tiled_forward` are the tiling itself, pure functions tested against
  the untiled result.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from workers.errors import DeviceOutOfMemoryError, UnsupportedModelError
from workers.io.weights import file_sha256
from workers.ops.device import Bf16Agreement, CpuCapabilities, PrecisionChoice, choose_precision, recorded_agreement
from workers.ops.device_errors import attempt, device_failures_raised
from workers.ops.upscalers import ChannelOrder, TilePolicy

logger = logging.getLogger(__name__)

Forward = Callable[[torch.Tensor], torch.Tensor]
Finish = Callable[[torch.Tensor], torch.Tensor]  # a model output (or a tile of one) as it is to be stored
Store = Callable[[torch.Tensor], None]  # puts a finished output (or tile) where it belongs
CompileMode = Literal["off", "default", "reduce-overhead", "max-autotune"]
REQUIRED_SCALE = 4
COMPILE_MODES: tuple[str, ...] = ("off", "default", "reduce-overhead", "max-autotune")

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cuda_has_bf16(device: torch.device) -> bool:
    """Native bf16 (Ampere and later), not the emulation torch also accepts on older cards."""
    if device.type != "cuda":
        return False
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8


def resolve_precision(precision: str, device: torch.device, agreement: Bf16Agreement | None = None,
                      cpu: CpuCapabilities | None = None) -> PrecisionChoice:
    """The precision a model runs in on ``device`` (:func:`workers.ops.device.choose_precision`: on CUDA
    bf16 where the card has it, else fp16; on a CPU bf16 where it is native and ``agreement`` says the
    model's bf16 output agrees with its fp32 output; fp32 otherwise)."""
    return choose_precision(precision, device.type, cpu or CpuCapabilities.detect(), cuda_bf16=cuda_has_bf16(device),
                            agreement=agreement)


def resolve_dtype(precision: str, device: torch.device, agreement: Bf16Agreement | None = None,
                  cpu: CpuCapabilities | None = None) -> torch.dtype:
    """:func:`resolve_precision` as a torch dtype."""
    return resolve_precision(precision, device, agreement, cpu).torch_dtype()


def load_descriptor(path: Path | str) -> Any:
    """Load a checkpoint with spandrel and check it is a 3-channel 4x image super-resolution model.

    Returns the ``spandrel.ImageModelDescriptor`` on the CPU, in fp32, in whatever mode it loads.

    Raises:
        UnsupportedModelError: spandrel cannot load the file (missing, truncated, corrupt, unknown
            architecture), or it is not a 4x RGB SR model; the message names the file.
    """
    import spandrel

    from workers.ops.unet import register

    register()  # the project's own architecture, beside spandrel's
    path = Path(path)
    try:
        descriptor = spandrel.ModelLoader().load_from_file(path)
    except Exception as exc:  # unpickling/zip/safetensors each raise their own types
        raise UnsupportedModelError(f"{path}: not a checkpoint spandrel can load ({type(exc).__name__}: {exc})") from None
    return _checked(descriptor, str(path))


def descriptor_from_safetensors(data: bytes, label: str) -> Any:
    """:func:`load_descriptor` of a safetensors file's bytes (``label`` names it in errors)."""
    import spandrel
    from safetensors.torch import load

    from workers.ops.unet import register

    register()
    try:
        descriptor = spandrel.ModelLoader().load_from_state_dict(load(data))
    except Exception as exc:  # noqa: BLE001 - as load_descriptor
        raise UnsupportedModelError(f"{label}: not a checkpoint spandrel can load ({type(exc).__name__}: {exc})") from None
    return _checked(descriptor, label)


def _checked(descriptor: Any, label: str) -> Any:
    import spandrel

    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise UnsupportedModelError(f"{label}: {descriptor.architecture.name} is not an image-to-image model")
    if descriptor.scale != REQUIRED_SCALE:
        raise UnsupportedModelError(f"{label}: model scale is x{descriptor.scale}, this pipeline needs x{REQUIRED_SCALE}")
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise UnsupportedModelError(
            f"{label}: model maps {descriptor.input_channels} to {descriptor.output_channels} channels, need 3 to 3"
        )
    return descriptor


def load_upscaler(path: Path | str, device: str = "auto", precision: str = "auto", tiles: TilePolicy | None = None,
                  source: str = "", cudnn_benchmark: bool = False, compile_mode: str = "off",
                  agreement: Bf16Agreement | None = None, models_dir: str = "",
                  agreement_cache: Path | None = None) -> Upscaler:
    """Load a checkpoint (:func:`load_descriptor`) onto ``device`` in ``precision``, ready to upscale.

    The model runs in ``channels_last`` on every device: cuDNN's fp16/bf16 kernels want NHWC, and on
    a CPU oneDNN runs the same convolutions about twice as fast with identical outputs (measured:
    ``benchmarks/cpu_inference.py``). ``precision`` ``auto`` follows :func:`resolve_precision`, with the
    file's bf16 agreement given (``agreement``) or recorded (:func:`~workers.ops.device.recorded_agreement`:
    beside the file, in the registry of ``models_dir``, in ``agreement_cache``). ``cudnn_benchmark`` lets
    cuDNN time its algorithms for each new input shape (process-wide); ``compile_mode`` wraps the
    network in ``torch.compile`` (the fp32 recompute of a non-finite pass stays eager). ``source`` says
    where the file came from, for reports (default ``file:<path>``).

    Raises:
        UnsupportedModelError: as :func:`load_descriptor`.
        ValueError: an unknown ``compile_mode``.
    """
    if compile_mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {COMPILE_MODES}, got {compile_mode!r}")
    path = Path(path)
    descriptor = load_descriptor(path)
    sha256 = file_sha256(path)
    torch_device = resolve_device(device)
    if precision == "auto" and agreement is None and torch_device.type == "cpu":
        agreement = recorded_agreement(path, sha256, models_dir, agreement_cache)
    choice = resolve_precision(precision, torch_device, agreement)
    dtype = choice.torch_dtype()
    if (dtype is torch.float16 and not descriptor.supports_half) or (
        dtype is torch.bfloat16 and not descriptor.supports_bfloat16
    ):
        logger.warning("%s does not support %s; using fp32", descriptor.architecture.name, dtype)
        choice = PrecisionChoice("fp32", f"{descriptor.architecture.name} does not support {choice.dtype}")
        dtype = torch.float32
    descriptor.eval().to(torch_device)
    descriptor.model.to(dtype=dtype, memory_format=torch.channels_last)
    if torch_device.type == "cuda":
        torch.backends.cudnn.benchmark = cudnn_benchmark
    network = None
    if compile_mode != "off":
        network = torch.compile(descriptor.model, mode=None if compile_mode == "default" else compile_mode)
    logger.info("loaded %s (%s) on %s as %s (%s)%s", path.name, descriptor.architecture.name, torch_device,
                choice.dtype, choice.reason, f", torch.compile {compile_mode}" if network is not None else "")
    return Upscaler(descriptor, torch_device, dtype, tiles or TilePolicy(), source or f"file:{path.resolve()}",
                    sha256, network, precision_reason=choice.reason)


@dataclass(frozen=True)
class Upscaler:
    """A loaded model plus how to run it. Holds no per-call state."""

    descriptor: Any  # spandrel.ImageModelDescriptor (spandrel is imported on first use)
    device: torch.device
    dtype: torch.dtype
    tiles: TilePolicy
    source: str = ""  # where the checkpoint came from ("file:..." or "hf:repo/file@rev")
    sha256: str = ""  # of the checkpoint file
    network: Any = None  # what runs the model (a torch.compile'd module); None: descriptor.model
    precision_reason: str = ""  # why it runs in ``dtype`` (PrecisionChoice.reason)
    _fallback: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    _fallback_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def scale(self) -> int:
        return REQUIRED_SCALE

    @property
    def architecture(self) -> str:
        return self.descriptor.architecture.name

    @property
    def checks_finite(self) -> bool:
        """Reduced precision can overflow (fp16) or produce NaN: such passes are recomputed in fp32."""
        return self.dtype != torch.float32

    @property
    def precision(self) -> str:
        return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def describe(self) -> dict[str, str]:
        return {"model": self.source, "model_sha256": self.sha256, "device": str(self.device),
                "precision": self.precision, "precision_reason": self.precision_reason}

    def upscale(self, images: np.ndarray, channel_order: ChannelOrder = "rgb", tta: bool = False) -> np.ndarray:
        """``N x H x W x 3`` uint8 RGB -> ``N x 4H x 4W x 3`` uint8 RGB.

        ``channel_order="bgr"`` feeds the network BGR and flips the output back, as the seed did.
        ``tta`` averages the outputs of the 8 flips and rotations (x8 self-ensemble) in float,
        before rounding: about 8x the compute for a steadier estimate.

        Raises:
            DeviceOutOfMemoryError: even a single tile does not fit on the device.
            DeviceLostError: the device's context is broken (this process cannot use it again).
        """
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"expected N x H x W x 3 uint8 images, got {images.shape} {images.dtype}")
        n, h, w, _ = images.shape
        bgr = channel_order == "bgr"
        result, target = self._host_output((n, h * self.scale, w * self.scale, 3))
        call = _Call(_bgr_to_rgb_uint8 if bgr else _to_rgb_uint8, tta)
        with device_failures_raised(self.device), torch.inference_mode():
            x = self._device_input(images[..., ::-1] if bgr else images)
            self._forward_resilient(x, target, call)
            self._settle(call)
        return result

    # -- input and output ----------------------------------------------------------------------------

    def _device_input(self, images: np.ndarray) -> torch.Tensor:
        """uint8 NHWC on the host -> uint8 N x C x H x W on the device (NHWC memory, a view).

        Passes convert their part to the model's dtype (:func:`_model_input`): no full-size float
        copy of the input exists, and an fp32 recompute starts from the exact values.
        """
        x = torch.from_numpy(np.require(images, requirements=["C", "W"]))
        return x.to(self.device, non_blocking=True).permute(0, 3, 1, 2)

    def _host_output(self, shape: tuple[int, int, int, int]) -> tuple[np.ndarray, torch.Tensor]:
        """The uint8 NHWC array returned, and an N x C x H x W view of it that passes write into.

        On CUDA it is pinned (page-locked) memory from torch's caching host allocator, so the copies
        from the device run without blocking the host and without a staging copy; the block goes back
        to the cache when the caller drops the array.
        """
        host = torch.empty(shape, dtype=torch.uint8, pin_memory=self.device.type == "cuda")
        return host.numpy(), host.permute(0, 3, 1, 2)

    def _settle(self, call: _Call) -> None:
        """Wait for the device once, then recompute in fp32 the passes whose output was not finite."""
        if call.checks:
            flags = torch.stack([check.flag for check in call.checks]).cpu()  # the one synchronisation
            for check, bad in zip(call.checks, flags.tolist(), strict=True):
                if bad:
                    logger.warning("non-finite %s output for a %dx%d pass; recomputing it in fp32",
                                   str(self.dtype).removeprefix("torch."), check.x.shape[3], check.x.shape[2])
                    check.store(call.finish(self._predict(_model_input(check.x, torch.float32), call.tta, None)))
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # the non-blocking copies into the result

    # -- running the model -----------------------------------------------------------------------------

    def _model_forward(self, x: torch.Tensor) -> torch.Tensor:
        """One raw pass of the network in its dtype: spandrel's padding and crop, no clamp."""
        return self.raw_forward(self.descriptor.model if self.network is None else self.network, x)

    def _precise_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The same pass in fp32 (an fp32 copy of the model, made on first need and kept)."""
        if not self.checks_finite:
            return self._model_forward(x)
        with self._fallback_lock:
            if "fp32" not in self._fallback:
                self._fallback["fp32"] = copy.deepcopy(self.descriptor.model).float()
            model = self._fallback["fp32"]
        return self.raw_forward(model, x)

    def raw_forward(self, model: Any, x: torch.Tensor) -> torch.Tensor:
        """``model`` on ``x`` the way spandrel's ``ImageModelDescriptor.__call__`` runs it (pad to the
        architecture's size requirements, its call function, crop the padding), minus its in-place
        clamp to [0, 1], which would hide an overflow to +-inf."""
        from spandrel.__helpers.size_req import pad_tensor  # the wrapper's own padding

        _, _, h, w = x.shape
        did_pad, padded = pad_tensor(x.contiguous(memory_format=torch.channels_last), self.descriptor.size_requirements)
        call = getattr(self.descriptor, "_call_fn", None) or (lambda m, image: m(image))
        y = call(model, padded)
        return y[..., : h * self.scale, : w * self.scale] if did_pad else y

    def _predict(self, x: torch.Tensor, tta: bool, checks: list[torch.Tensor] | None) -> torch.Tensor:
        """The raw output for ``x``; with ``tta`` the fp32 mean over the 8 dihedral transforms, each undone.

        ``checks`` None: in fp32 (the recompute). Otherwise in the model's dtype, appending to it a
        device flag per model call that is True when that call's raw output was not finite.
        """
        forward = self._precise_forward if checks is None else self._model_forward

        def once(t: torch.Tensor) -> torch.Tensor:
            y = forward(t)
            if checks is not None and self.checks_finite:
                # Any inf or NaN makes the fp32 sum non-finite: one reduction, not an elementwise mask
                # (a tenth of the time on a CPU).
                checks.append(~torch.isfinite(y.sum(dtype=torch.float32)))
            return y

        if not tta:
            return once(x)
        total: torch.Tensor | None = None
        for flip in (False, True):
            for turns in range(4):
                y = once(torch.rot90(x.flip(3) if flip else x, turns, dims=(2, 3)))
                y = torch.rot90(y, -turns, dims=(2, 3))
                y = (y.flip(3) if flip else y).float()
                total = y if total is None else total.add_(y)
        assert total is not None
        return total.div_(8)

    def _run(self, x: torch.Tensor, store: Store, call: _Call) -> None:
        """One pass over uint8 ``x`` (a batch, part of one, or a tile): predict, finish, store; remember
        its finiteness."""
        flags: list[torch.Tensor] = []
        store(call.finish(self._predict(_model_input(x, self.dtype), call.tta, flags)))
        if flags:
            call.checks.append(_Check(x, store, flags[0] if len(flags) == 1 else torch.stack(flags).any()))

    def _attempt(self, work: Callable[[], None], call: _Call) -> bool:
        """Run ``work``; False if the device ran out of memory (its checks are dropped, the cache is
        emptied). Returns only after the ``except`` block has ended: the failed pass's tensors are freed."""
        mark = len(call.checks)
        fitted, _ = attempt(work)
        if not fitted:
            del call.checks[mark:]
            _release_cached_memory(self.device)
        return fitted

    def _forward_resilient(self, x: torch.Tensor, out: torch.Tensor, call: _Call) -> None:
        """``finish(model(x))`` into ``out`` (N x C x 4H x 4W, any device and strides): the whole batch
        if it fits; else halves; else one image in tiles, each tile finished and stored on its own.

        Raises:
            DeviceOutOfMemoryError: even a single tile does not fit on the device.
        """
        n, _, h, w = x.shape
        if h * w > self.tiles.max_pixels:
            for i in range(n):
                self._tiled(x[i : i + 1], out[i : i + 1], call)
            return
        if self._attempt(lambda: self._run(x, _copy_into(out), call), call):
            return
        if n > 1:
            logger.warning("out of memory on a batch of %d %dx%d images; splitting", n, w, h)
            half = n // 2
            self._forward_resilient(x[:half], out[:half], call)
            self._forward_resilient(x[half:], out[half:], call)
            return
        logger.warning("out of memory on one %dx%d image; tiling", w, h)
        self._tiled(x, out, call)

    def _tiled(self, x: torch.Tensor, out: torch.Tensor, call: _Call) -> None:
        size, overlap = self.tiles.size, self.tiles.overlap

        def run_tiles() -> None:
            for window in tile_windows(x.shape[2], x.shape[3], size, overlap, self.scale):
                self._run(x[window.source], _copy_into(out[window.target], window.crop), call)

        while not self._attempt(run_tiles, call):
            if size // 2 <= 2 * overlap:
                raise DeviceOutOfMemoryError(f"out of memory even with {size}px tiles on {self.device}")
            size //= 2
            logger.warning("out of memory while tiling; retrying with %dpx tiles", size)


@dataclass(frozen=True)
class _Check:
    """A pass whose output's finiteness is still on the device: its input, where it went, the flag."""

    x: torch.Tensor  # uint8
    store: Store
    flag: torch.Tensor


@dataclass
class _Call:
    """What one :meth:`Upscaler.upscale` call carries through its passes (never shared between calls)."""

    finish: Finish
    tta: bool
    checks: list[_Check] = field(default_factory=list)


def _model_input(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """uint8 -> ``dtype`` in [0, 1]. In a half type ``x / 255`` is computed in fp32 and rounded once,
    so the values are fp32's rounded to it."""
    return x.to(dtype).div_(255.0)


def _copy_into(out: torch.Tensor, crop: tuple[slice, ...] = ()) -> Store:
    """Store a finished result (or its ``crop``) into ``out``, without waiting for the device where
    ``out`` is pinned host memory."""

    def store(result: torch.Tensor) -> None:
        out.copy_(result[crop] if crop else result, non_blocking=True)

    return store


def _to_rgb_uint8(y: torch.Tensor) -> torch.Tensor:
    """Model output in [0, 1] to uint8, rounded (in fp32: fp16 cannot hold x.5 steps near 255)."""
    return y.float().clamp_(0, 1).mul_(255.0).round_().to(torch.uint8)


def _bgr_to_rgb_uint8(y: torch.Tensor) -> torch.Tensor:
    """:func:`_to_rgb_uint8` of an output the network made in BGR order, channels flipped back."""
    return _to_rgb_uint8(y).flip(1)


def _release_cached_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


@dataclass(frozen=True)
class TileWindow:
    """One tile: what it reads from the input, where its core goes in the output, and the core's
    place within the tile's own output (index tuples over N x C x H x W)."""

    source: tuple[slice, ...]
    target: tuple[slice, ...]
    crop: tuple[slice, ...]


def tile_windows(height: int, width: int, tile: int, overlap: int, scale: int) -> Iterator[TileWindow]:
    """The tiles of an ``height x width`` input: ``tile x tile`` cores, each read with ``overlap``
    pixels of context on every side (less at the image border), row by row."""
    if tile <= 0 or overlap < 0:
        raise ValueError(f"tile must be > 0 and overlap >= 0, got {tile}, {overlap}")
    every = slice(None)
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            bottom, right = min(top + tile, height), min(left + tile, width)
            y0, x0 = max(top - overlap, 0), max(left - overlap, 0)
            y1, x1 = min(bottom + overlap, height), min(right + overlap, width)
            oy, ox = (top - y0) * scale, (left - x0) * scale
            yield TileWindow(
                (every, every, slice(y0, y1), slice(x0, x1)),
                (every, every, slice(top * scale, bottom * scale), slice(left * scale, right * scale)),
                (every, every, slice(oy, oy + (bottom - top) * scale), slice(ox, ox + (right - left) * scale)),
            )


def tiled_forward(forward: Forward, x: torch.Tensor, tile: int, overlap: int, scale: int,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """Run ``forward`` over ``x`` (N x C x H x W) tile by tile and stitch the outputs into ``out``.

    Each ``tile x tile`` core is processed with ``overlap`` pixels of context on every side (less at
    the image border) and only the core's output is kept, so seams see the same context as the
    untiled pass up to the overlap. ``out`` (N x C x sH x sW, any dtype, device and strides: e.g. a
    view of a host array) defaults to a new tensor like ``x``; it is returned.
    """
    n, c, h, w = x.shape
    out = x.new_empty((n, c, h * scale, w * scale)) if out is None else out
    for window in tile_windows(h, w, tile, overlap, scale):
        out[window.target] = forward(x[window.source])[window.crop]
    return out
