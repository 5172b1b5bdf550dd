"""What micro-batching gains the upscaler: images/s at batch sizes 1, 2, 4, 8 (and 16 on CUDA).

The same synthetic images go through the model in batches of each size; a batch is converted,
run and copied back exactly as ``workers.ops.upscale.Upscaler.upscale`` does, but without its
out-of-memory fallback (which would quietly split the batch): an out-of-memory error ends that
variant's sweep instead, so the largest batch that fits is visible. On CUDA the sweep is run for
the production memory format (``channels_last``, what ``load_upscaler`` sets), plain NCHW, and
with ``--compile`` also ``torch.compile`` of the channels_last model.

On a CPU a batch runs the same convolutions over more pixels, so a gain there is only higher
efficiency of the same work (the TFLOP/s column shows it); it depends on input size and threads.

    python -m benchmarks.batching --size 256x160 [--device cuda] [--compile]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Any

from benchmarks import harness, machine, workload
from benchmarks.harness import fmt, log


@dataclass
class Point:
    variant: str
    batch: int
    images: int = 0
    seconds: float = float("nan")
    first_call_s: float = float("nan")  # warm-up, compilation included
    peak_gib: float = float("nan")
    status: str = "ok"  # ok | OOM | skipped (reason)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.status == "ok" else float("nan")


@dataclass(frozen=True)
class Variant:
    label: str
    memory_format: Any  # torch.memory_format
    compile: bool = False
    cudnn_benchmark: bool = False


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = harness.parser(__file__, __doc__)
    harness.add_common_arguments(parser, count=None)
    parser.add_argument("--count", type=int, default=0,
                        help="images per measurement [default: twice the largest batch size]")
    parser.add_argument("--batch-sizes", default="",
                        help="comma-separated batch sizes [default: 1,2,4,8; CUDA: 1,2,4,8,16]")
    parser.add_argument("--repeats", type=int, default=0,
                        help="timed passes per point, best kept [default: 3 on CUDA, 1 on CPU]")
    parser.add_argument("--formats", default="auto",
                        help="memory formats to compare: auto (CUDA: channels_last,nchw; CPU: the production "
                             "nchw), or a list of nchw,channels_last [default: auto]")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the channels_last model")
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="CUDA: also time channels_last with torch.backends.cudnn.benchmark (CUDNN_BENCHMARK=1)")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.count = harness.QUICK_SIZE, harness.QUICK_COUNT
        args.batch_sizes = args.batch_sizes or "1,2"
    try:
        sizes = [int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes else []
    except ValueError:
        parser.error(f"--batch-sizes must be integers separated by commas, got {args.batch_sizes!r}")
    if any(b < 1 for b in sizes):
        parser.error("batch sizes must be >= 1")
    args.batch_sizes = sorted(set(sizes))
    return args


def variants(args: argparse.Namespace, device: Any) -> list[Variant]:
    import torch

    formats = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
    production = "channels_last"  # load_upscaler's choice on every device
    if args.formats == "auto":
        names = ["channels_last", "nchw"] if device.type == "cuda" else ["channels_last"]
    else:
        names = [n.strip() for n in args.formats.split(",") if n.strip()]
        unknown = set(names) - set(formats)
        if unknown:
            raise SystemExit(f"--formats: unknown {sorted(unknown)}; choose from nchw, channels_last")
    result = [Variant(f"{n}{' (production)' if n == production else ''}", formats[n]) for n in names]
    if args.cudnn_benchmark and device.type == "cuda":
        result.append(Variant("channels_last + cudnn.benchmark", formats["channels_last"], cudnn_benchmark=True))
    if args.compile:
        result.append(Variant("channels_last + torch.compile", formats["channels_last"], compile=True))
    return result


def forward_batch(batch: Any, upscaler: Any, memory_format: Any, forward: Any) -> Any:
    """``Upscaler.upscale`` minus channel-order handling and the out-of-memory fallback."""
    import numpy as np
    import torch

    x = torch.from_numpy(np.ascontiguousarray(batch)).to(upscaler.device).permute(0, 3, 1, 2)
    x = x.float().div_(255.0).to(upscaler.dtype).contiguous(memory_format=memory_format)
    with torch.inference_mode():
        y = forward(x)
        out = y.float().clamp_(0, 1).mul_(255.0).round_().to(torch.uint8)
    return out.permute(0, 2, 3, 1).cpu().numpy()


def sweep(variant: Variant, upscaler: Any, images: list[Any], batch_sizes: list[int], repeats: int) -> list[Point]:
    import numpy as np
    import torch

    model = upscaler.descriptor.model
    model.to(memory_format=variant.memory_format)
    forward = torch.compile(model) if variant.compile else upscaler.descriptor
    cuda = upscaler.device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = variant.cudnn_benchmark
    points = []
    for batch in batch_sizes:
        point = Point(variant.label, batch)
        points.append(point)
        if batch > len(images):
            point.status = f"skipped (only {len(images)} images)"
            continue
        usable = images[: len(images) // batch * batch]
        stacked = [np.stack(usable[i : i + batch]) for i in range(0, len(usable), batch)]
        log(f"{variant.label}: batch {batch}, {len(usable)} images")
        try:
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(upscaler.device)
            first = stacked[0] if cuda or variant.compile else stacked[0][:, :8, :8]
            _, point.first_call_s = harness.timed(lambda f=first: forward_batch(f, upscaler, variant.memory_format, forward),
                                                 upscaler.device)
            best = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                for chunk in stacked:
                    forward_batch(chunk, upscaler, variant.memory_format, forward)  # host copy: synchronised
                best = min(best, time.perf_counter() - start)
            point.images, point.seconds = len(usable), best
            if cuda:
                point.peak_gib = torch.cuda.max_memory_allocated(upscaler.device) / 2**30
        except torch.OutOfMemoryError:
            point.status = "OOM"
            if cuda:
                torch.cuda.empty_cache()
            log(f"{variant.label}: out of memory at batch {batch}; stopping this sweep")
            break
    return points


def report(points: list[Point], macs: float, pixels_per_image: int, cuda: bool) -> str:
    rows = []
    base: dict[str, float] = {}
    for p in points:
        if p.status != "ok":
            rows.append((p.variant, p.batch, p.images or "-", "-", "-", "-", "-", "-", "-", p.status))
            continue
        base.setdefault(p.variant, p.images_per_second if p.batch == 1 else float("nan"))
        ratio = p.images_per_second / base[p.variant]
        achieved = 2 * macs * pixels_per_image * p.images / p.seconds / 1e12
        rows.append((p.variant, p.batch, p.images, f"{p.seconds:.3f}", fmt(p.images_per_second),
                     f"{ratio:.2f}x" if ratio == ratio else "n/a", fmt(1000 * p.seconds / p.images),
                     f"{achieved:.4f}", fmt(p.peak_gib) if cuda else "-", f"ok (first call {p.first_call_s:.2f} s)"))
    return harness.markdown_table(("variant", "batch", "images", "best s", "images/s", "vs batch 1", "ms/image",
                                  "TFLOP/s", "peak GiB", "status"), rows)


def peak_images_per_second(peak: machine.Peak, macs: float, pixels: int) -> float:
    """Images/s the device's peak FLOP/s would give for this model and input size."""
    return peak.flops / (2 * macs * pixels)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from workers.ops.upscale import load_upscaler

    bench = harness.start(args.device, args.torch_threads)
    device = bench.device
    batch_sizes = args.batch_sizes or ([1, 2, 4, 8, 16] if device.type == "cuda" else [1, 2, 4, 8])
    count = args.count or 2 * max(batch_sizes)
    repeats = args.repeats or (3 if device.type == "cuda" else 1)
    width, height = args.size
    images = workload.synthetic_images(count, width, height)
    upscaler = load_upscaler(args.weights, args.device)
    macs = workload.conv_macs_per_pixel(upscaler.descriptor.model, upscaler.device, upscaler.dtype)
    peak = machine.device_peak(upscaler.device)

    points: list[Point] = []
    for variant in variants(args, device):
        points += sweep(variant, upscaler, images, batch_sizes, repeats)

    cuda = device.type == "cuda"
    print(f"## Batching: up to {count} images {width}x{height} -> {4 * width}x{4 * height}, best of {repeats}\n")
    print(report(points, macs, width * height, cuda))
    print()
    for label in dict.fromkeys(p.variant for p in points):
        ok = [p for p in points if p.variant == label and p.status == "ok"]
        if not ok:
            print(f"- {label}: no batch size fitted")
            continue
        best = max(ok, key=lambda p: p.images_per_second)
        first = next((p for p in ok if p.batch == 1), None)
        gain = f", {best.images_per_second / first.images_per_second:.2f}x batch 1" if first else ""
        oom = next((p.batch for p in points if p.variant == label and p.status == "OOM"), None)
        limit = f"; out of memory at batch {oom}" if oom else ""
        print(f"- {label}: best batch {best.batch} at {fmt(best.images_per_second)} images/s{gain}{limit}")
        harness.record(args, f"{label}: best batch {best.batch}", best.images_per_second, "images/s",
                      f"{2 * macs * width * height * best.images_per_second / 1e12:.1f} TFLOP/s"
                      + (f", {best.images_per_second / peak_images_per_second(peak, macs, width * height):.0%} of peak"
                         if peak.flops else ""))
    if not cuda:
        print(f"\nOn a CPU ({width}x{height} inputs) a batch runs the same convolutions over more pixels: a gain is "
              "the same work done more efficiently (TFLOP/s column), bounded by the CPU's peak, and it depends on "
              "the input size and thread count. On a shared machine runs differ by tens of percent: repeat before "
              "trusting a ratio.")
    print(f"\nPeak: {peak.assumption}. Model: {fmt(macs / 1e6)} M multiply-adds per input pixel.\n")
    print(bench.upscaler_table(upscaler, args.weights, width, height))
    return 0


if __name__ == "__main__":
    sys.exit(main())
