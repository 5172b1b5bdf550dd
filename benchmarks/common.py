"""Small helpers shared by the benchmark scripts: machine description, synthetic inputs, timing, tables.

Nothing here asserts anything about speed: the scripts measure and print, the reader judges.
Heavy libraries (torch, the pipeline) are imported inside functions so ``--help`` stays instant.
"""

from __future__ import annotations

import os
import platform
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent

DEFAULT_SIZE = (256, 160)
DEFAULT_WEIGHTS = REPO.parent / "shared" / "weights" / "RealESRGAN_x4plus.pth"
DEFAULT_WEIGHTS_DIR = DEFAULT_WEIGHTS.parent
QUICK_SIZE = (16, 12)
QUICK_COUNT = 2

# RRDBNet, 23 blocks, nf 64, gc 32, x4: multiply-adds per *input* pixel (counted: see conv_macs_per_pixel).
RRDB23_MACS_PER_PIXEL = 17.9e6

# Dense fp16 tensor-core peaks (no sparsity), TFLOP/s, from the vendors' data sheets. First match wins.
CUDA_FP16_PEAK_TFLOPS: tuple[tuple[str, float, str], ...] = (
    (r"h100.*pcie", 756.0, "H100 PCIe"),
    (r"h100", 989.0, "H100 SXM"),
    (r"h200", 989.0, "H200"),
    (r"a100", 312.0, "A100"),
    (r"\ba10\b", 125.0, "A10"),
    (r"\bl4\b", 121.0, "L4"),
    (r"\bt4\b", 65.0, "T4"),
)


def log(message: str) -> None:
    """Progress goes to stderr, so stdout holds only the Markdown report."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- arguments ----------------------------------------------------------------------------------------


def parse_size(text: str) -> tuple[int, int]:
    """``"256x160"`` -> ``(256, 160)`` (width, height)."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or int(match[1]) < 1 or int(match[2]) < 1:
        raise ValueError(f"size must look like WIDTHxHEIGHT, e.g. 256x160, got {text!r}")
    return int(match[1]), int(match[2])


def default_weights() -> Path:
    """``WEIGHTS`` from the environment when set, else the shared RealESRGAN_x4plus stand-in."""
    env = os.environ.get("WEIGHTS")
    return Path(env) if env else DEFAULT_WEIGHTS


def add_common_arguments(parser: Any, size: bool = True, count: int | None = 8) -> None:
    """``--device``, ``--weights`` and (optionally) ``--size``, ``--count``, ``--quick``."""
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where the upscaler runs (auto: CUDA when present) [default: auto]")
    parser.add_argument("--weights", type=Path, default=default_weights(),
                        help="checkpoint spandrel can load (a 3-channel x4 model) [default: $WEIGHTS or %(default)s]")
    if size:
        parser.add_argument("--size", type=parse_size, default=DEFAULT_SIZE, metavar="WxH",
                            help="input image size, before the x4 upscale [default: 256x160]")
    if count is not None:
        parser.add_argument("--count", type=int, default=count, help=f"number of images [default: {count}]")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {QUICK_COUNT} images of {QUICK_SIZE[0]}x{QUICK_SIZE[1]}")
    parser.set_defaults(script=parser.prog.removesuffix(".py"))
    parser.add_argument("--results", type=Path, default=None, metavar="FILE",
                        help="also append the headline numbers to FILE as JSON lines (scripts/device-check "
                             "builds its one table from them)")
    parser.add_argument("--torch-threads", type=int, default=0,
                        help="torch intra-op threads in this process (and OMP_NUM_THREADS for workers it starts); "
                             "0: torch's default, one per core [default: 0]")


def parse_common(parser: Any, argv: list[str] | None, min_count: int = 1) -> Any:
    """Parse ``argv``; ``--quick`` shrinks ``--size`` and ``--count`` to a smoke run."""
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.count = QUICK_SIZE, QUICK_COUNT
    if args.count < min_count:
        parser.error(f"--count must be >= {min_count}")
    return args


def record(args: Any, metric: str, value: float | str, unit: str = "", note: str = "") -> None:
    """Append one headline number to ``--results`` (nothing without it): what a summary of several
    scripts' runs is built from, so no one parses Markdown."""
    path = getattr(args, "results", None)
    if path is None:
        return
    import json

    line = {"script": args.script, "metric": metric,
            "value": value if isinstance(value, str) else float(value), "unit": unit, "note": note}
    with Path(path).open("a", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\n")


def print_machine(upscaler: Any, weights: Path, width: int, height: int, load_avg_start: str) -> None:
    """The machine table that ends every benchmark's output."""
    model_label = describe_model(weights, upscaler.descriptor, upscaler.dtype)
    print(machine_table(upscaler.device, model_label, f"{width}x{height} -> {4 * width}x{4 * height}",
                        [("load average at start", load_avg_start)]))


def apply_torch_threads(threads: int) -> None:
    """Pin torch's thread count (0 leaves torch's default). On a busy machine, OpenMP threads that
    wait for each other at every layer can make 2 threads several times slower than 1."""
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


def resolve_device(name: str) -> Any:
    """``auto`` -> CUDA when available, else CPU (a ``torch.device``)."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available here")
    return torch.device(name)


# -- inputs -------------------------------------------------------------------------------------------


def synthetic_images(count: int, width: int, height: int, seed: int = 0) -> list[np.ndarray]:
    """Dark, noisy RGB uint8 images with smooth shading and hard edges, deterministic per ``seed``.

    Degraded like ``dataset/make_sample.py``: darkened (0.6 * x**1.3), then Poisson-Gaussian noise.
    NL-means and the upscaler cost the same whatever the content; the content only keeps the
    pictures plausible for anyone who looks at the outputs.
    """
    images = []
    for k in range(count):
        rng = np.random.default_rng((seed, k))
        coarse = rng.uniform(0.2, 1.0, (4, 5, 3)).astype(np.float32)
        y = np.linspace(0, 3, height)[:, None]
        x = np.linspace(0, 4, width)[None, :]
        y0, x0 = np.floor(y).astype(int).clip(0, 2), np.floor(x).astype(int).clip(0, 3)
        fy, fx = (y - y0)[..., None], (x - x0)[..., None]
        shade = (coarse[y0, x0] * (1 - fy) * (1 - fx) + coarse[y0 + 1, x0] * fy * (1 - fx)
                 + coarse[y0, x0 + 1] * (1 - fy) * fx + coarse[y0 + 1, x0 + 1] * fy * fx)
        for _ in range(3):  # a few flat rectangles: edges for the upscaler to sharpen
            top, left = rng.integers(0, max(height - 2, 1)), rng.integers(0, max(width - 2, 1))
            shade[top : top + max(height // 3, 1), left : left + max(width // 3, 1)] = rng.uniform(0, 1, 3)
        dark = 0.6 * shade**1.3
        noisy = rng.poisson(dark * 60) / 60 + rng.normal(0, 0.02, dark.shape)
        images.append((noisy.clip(0, 1) * 255).round().astype(np.uint8))
    return images


def write_inputs(folder: Path, images: Sequence[np.ndarray], prefix: str = "test_") -> list[Path]:
    """Save ``images`` as ``<prefix>00001.png``... (the competition's naming)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, rgb in enumerate(images, start=1):
        path = folder / f"{prefix}{i:05d}.png"
        Image.fromarray(rgb).save(path)
        paths.append(path)
    return paths


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- machine ------------------------------------------------------------------------------------------


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty off Linux)."""
    info: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        if not line.strip():
            if info:
                break
            continue
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    return info


def cpu_model() -> str:
    info = _cpuinfo()
    return info.get("model name") or platform.processor() or platform.machine() or "unknown"


def cpu_flags() -> set[str]:
    return set(_cpuinfo().get("flags", "").split())


def core_count() -> int:
    """Cores this process may use (affinity), which is what the benchmarks can load."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def cpu_ghz() -> tuple[float, str]:
    """Clock in GHz and where it came from (cpufreq's maximum, else /proc/cpuinfo's current MHz)."""
    try:
        khz = int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text())
        return khz / 1e6, "cpufreq max"
    except (OSError, ValueError):
        pass
    mhz = _cpuinfo().get("cpu MHz")
    if mhz:
        return float(mhz) / 1000, "/proc/cpuinfo cpu MHz"
    return 0.0, "unknown"


def cpu_flops_per_cycle(flags: set[str] | None = None) -> tuple[int, str]:
    """fp32 FLOP per cycle per core, assuming two FMA pipes as wide as the widest vector ISA."""
    flags = cpu_flags() if flags is None else flags
    if "avx512f" in flags:
        return 64, "AVX-512 FMA fp32: 2 FMA x 16 lanes x 2 = 64 FLOP/cycle/core"
    if "avx2" in flags and "fma" in flags:
        return 32, "AVX2 FMA fp32: 2 FMA x 8 lanes x 2 = 32 FLOP/cycle/core"
    if "avx" in flags:
        return 16, "AVX fp32, no FMA: 16 FLOP/cycle/core"
    return 8, "SSE fp32: 8 FLOP/cycle/core"


@dataclass(frozen=True)
class Peak:
    flops: float  # FLOP/s; 0 when unknown
    assumption: str


def device_peak(device: Any) -> Peak:
    """Peak FLOP/s of ``device``: a data-sheet fp16 figure on CUDA, cores x GHz x FLOP/cycle on CPU."""
    if device.type == "cuda":
        import torch

        name = torch.cuda.get_device_name(device)
        for pattern, tflops, label in CUDA_FP16_PEAK_TFLOPS:
            if re.search(pattern, name.lower()):
                return Peak(tflops * 1e12, f"{label} dense fp16 tensor-core peak {tflops:g} TFLOP/s (data sheet)")
        return Peak(0.0, f"no peak on record for {name!r}")
    cores, (ghz, source), (per_cycle, why) = core_count(), cpu_ghz(), cpu_flops_per_cycle()
    flops = cores * ghz * 1e9 * per_cycle
    return Peak(flops, f"{cores} cores x {ghz:.2f} GHz ({source}) x {per_cycle} FLOP/cycle ({why}) "
                       f"= {flops / 1e12:.3f} TFLOP/s; an estimate, no turbo, no AMX")


def device_name(device: Any) -> str:
    if device.type == "cuda":
        import torch

        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {cpu_model()}"


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def machine_table(device: Any, model: str, image_size: str, extra: Sequence[tuple[str, str]] = ()) -> str:
    """The machine and workload a result belongs to, as a Markdown table."""
    import cv2
    import torch

    flags = cpu_flags()
    isa = ", ".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags) or "n/a"
    rows = [
        ("CPU", f"{cpu_model()} (flags: {isa})"),
        ("cores", f"{core_count()} usable of {os.cpu_count()}"),
        ("torch", f"{torch.__version__} ({_plural(torch.get_num_threads(), 'thread')}), OpenCV {cv2.__version__}"),
        ("device", device_name(device)),
        ("model", model),
        ("image size", image_size),
        ("load average (1, 5, 15 min)", load_average()),
        *extra,
    ]
    return markdown_table(("machine", "value"), rows)


# -- model --------------------------------------------------------------------------------------------


def conv_macs_per_pixel(module: Any, device: Any, dtype: Any, size: int = 8) -> float:
    """Multiply-adds per input pixel of ``module``'s convolutions, counted on a ``size`` x ``size`` input.

    Counts Conv2d layers only (everything else in these SR networks is noise next to them); exact
    for fully convolutional models whose convolutions keep their input's size (RRDBNet, SRVGG).
    """
    import torch

    total = 0

    def hook(conv: torch.nn.Conv2d, _inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        kh, kw = conv.kernel_size
        total += output[0].numel() * (conv.in_channels // conv.groups) * kh * kw

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.inference_mode():
            module(torch.zeros(1, 3, size, size, device=device, dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
    return total / (size * size)


def describe_model(path: Path, descriptor: Any, dtype: Any) -> str:
    params = sum(p.numel() for p in descriptor.model.parameters())
    return f"{path.name} ({descriptor.architecture.name}, {params / 1e6:.2f} M params, {str(dtype).replace('torch.', '')})"


# -- measuring ----------------------------------------------------------------------------------------


def synchronize(device: Any) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: Any = None) -> tuple[Any, float]:
    """``(fn(), seconds)``, with the device synchronised on both sides."""
    if device is not None:
        synchronize(device)
    start = time.perf_counter()
    result = fn()
    if device is not None:
        synchronize(device)
    return result, time.perf_counter() - start


@dataclass(frozen=True)
class StageTiming:
    """One stage over some images: total seconds and total input pixels."""

    label: str
    images: int
    seconds: float
    pixels: int  # input pixels, summed

    @property
    def ms_per_image(self) -> float:
        return 1000 * self.seconds / self.images

    @property
    def ms_per_megapixel(self) -> float:
        return 1000 * self.seconds / (self.pixels / 1e6)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds


def measure_nlm(images: Sequence[np.ndarray], threads: int = 1) -> StageTiming:
    """The production CPU stage (``workers.ops.denoise.denoise``, seed settings) with ``threads`` OpenCV threads."""
    import cv2

    from workers.ops.denoise import DenoiseSpec, denoise

    spec = DenoiseSpec()
    before = cv2.getNumThreads()
    cv2.setNumThreads(threads)
    try:
        denoise(images[0][:8, :8], spec)  # first call pays OpenCV's lazy initialisation
        start = time.perf_counter()
        for rgb in images:
            denoise(rgb, spec)
        seconds = time.perf_counter() - start
    finally:
        cv2.setNumThreads(before)
    return StageTiming(f"NL-means (OpenCV, {threads} thread{'s' if threads > 1 else ''})", len(images), seconds,
                       sum(i.shape[0] * i.shape[1] for i in images))


def warm_up_upscaler(upscaler: Any, images: Sequence[np.ndarray], batch_size: int, full: bool = False) -> None:
    """Untimed passes: on CUDA (or ``full``) a full batch and the last, partial one (kernels, allocator,
    and for torch.compile each input shape it will meet); on a CPU a tiny crop (it is slow)."""
    if upscaler.device.type == "cuda" or full:
        sizes = {min(batch_size, len(images)), len(images) % batch_size} - {0}
        for size in sorted(sizes):
            upscaler.upscale(np.stack(list(images[:size])))
    else:
        upscaler.upscale(np.stack(list(images[:1]))[:, :8, :8])


def measure_upscale(upscaler: Any, images: Sequence[np.ndarray], batch_size: int) -> StageTiming:
    """The production GPU stage (``Upscaler.upscale``, transfers and uint8 conversion included)."""
    warm_up_upscaler(upscaler, images, batch_size)
    start = time.perf_counter()
    for batch in chunks(images, batch_size):
        upscaler.upscale(np.stack(list(batch)))  # returns host arrays: synchronised
    seconds = time.perf_counter() - start
    return StageTiming(f"upscale, batch {batch_size} ({str(upscaler.dtype).replace('torch.', '')}, "
                       f"{upscaler.device.type})", len(images), seconds,
                       sum(i.shape[0] * i.shape[1] for i in images))


def tflops(macs_per_pixel: float, timing: StageTiming) -> float:
    """Achieved TFLOP/s: 2 FLOP per multiply-add."""
    return 2 * macs_per_pixel * timing.pixels / timing.seconds / 1e12


# -- output -------------------------------------------------------------------------------------------


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def fmt(value: float, digits: int = 3) -> str:
    """Compact number: 3 significant digits, no exponent for ordinary magnitudes."""
    if value != value:  # NaN
        return "n/a"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    decimals = max(digits - 1 - int(np.floor(np.log10(magnitude))), 0)
    return f"{value:.{decimals}f}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"
