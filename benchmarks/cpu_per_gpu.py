"""How many CPU cores of NL-means one GPU (upscaler device) needs to stay busy, at default settings.

    cores_needed = upscale images/s of the device x NL-means seconds per image on one core

NL-means is timed with one OpenCV thread (``OPENCV_THREADS=1``, the production default: one
denoising process or thread per core scales best), through ``workers.ops.denoise.denoise`` with the
seed's (7, 7, 7, 21). The upscaler is timed through ``Upscaler.upscale`` at the production batch
size (``GPU_BATCH_SIZE`` on CUDA, 1 on a CPU, where batching gains nothing). Size a CPU worker
pool per GPU worker from this number plus headroom for decoding and storage.

    python -m benchmarks.cpu_per_gpu --size 256x160 --count 16 [--device cuda]
"""

from __future__ import annotations

import argparse
import math
import sys

from benchmarks import harness, workload
from benchmarks.harness import fmt, log


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = harness.parser(__file__, __doc__)
    harness.add_common_arguments(parser, count=8)
    parser.add_argument("--batch-size", type=int, default=0,
                        help="upscaler batch size [default: GPU_BATCH_SIZE's default on CUDA, 1 on CPU]")
    parser.add_argument("--upscale-images", type=int, default=0,
                        help="images for the upscaler timing [default: count on CUDA, min(count, 2) on CPU]")
    return harness.parse_common(parser, argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from workers.ops.upscale import load_upscaler
    from workers.settings import Settings

    bench = harness.start(args.device, args.torch_threads)
    width, height = args.size
    images = workload.synthetic_images(args.count, width, height)

    log(f"NL-means, 1 thread: {len(images)} images")
    nlm = workload.measure_nlm(images, threads=1)
    upscaler = load_upscaler(args.weights, args.device)
    cuda = bench.device.type == "cuda"
    batch = args.batch_size or (Settings().gpu_batch_size if cuda else 1)
    n_up = args.upscale_images or (args.count if cuda else min(args.count, 2))
    up_images = images[:n_up]
    log(f"upscale, batch {min(batch, n_up)}: {n_up} images")
    up = workload.measure_upscale(upscaler, up_images, min(batch, n_up))
    nlm_s = nlm.seconds / nlm.images
    needed = up.images_per_second * nlm_s

    harness.record(args, "cores of NL-means one upscaler keeps busy", needed, "cores",
                  f"{fmt(up.images_per_second)} upscaled images/s x {fmt(1000 * nlm_s)} ms of NL-means per image")
    print(f"## CPU cores per upscaler device: {width}x{height} -> {4 * width}x{4 * height}\n")
    print(harness.markdown_table(("quantity", "value"), [
        ("NL-means on one core (OpenCV 1 thread, h=7, hColor=7, 7, 21)",
         f"{fmt(1000 * nlm_s)} ms/image ({fmt(nlm.ms_per_megapixel)} ms per input MP; {nlm.images} images)"),
        (f"upscale on {upscaler.device.type} ({up.label})",
         f"{fmt(up.images_per_second)} images/s ({fmt(up.ms_per_image)} ms/image; {up.images} images)"),
        ("cores_needed = upscale images/s x NL-means s/image", f"**{fmt(needed)}**"),
        ("CPU worker processes per upscaler device", f"{max(1, math.ceil(needed))} (rounded up, no headroom)"),
    ]))
    print()
    print(bench.upscaler_table(upscaler, args.weights, width, height))
    return 0


if __name__ == "__main__":
    sys.exit(main())
