"""Where should NL-means run? OpenCV on CPU cores, or the PyTorch port on the upscaler's device.

Prints, for the same images:
1. fidelity: the device port's output against OpenCV's, as PSNR and the share of values that
   differ, on these synthetic images and on the sample dataset's inputs (``dataset/test``,
   ``dataset/val/val``);
2. NL-means images/s: OpenCV on one core, and ``workers.ops.nlm_torch`` on the device (batched);
3. the upscaler alone (images/s), the ceiling both placements aim at;
4. the whole embedded pipeline with ``DENOISE_ON=cpu`` and ``DENOISE_ON=gpu`` when the process may
   use 2, 4 and 16 CPU cores (``os.sched_setaffinity``; counts above the machine's are skipped), as
   images/s, as a share of the upscaler-only rate, and whether its submission is byte-identical to
   the ``DENOISE_ON=cpu`` one (same bytes: same competition score).

    python -m benchmarks.denoise_placement --size 256x160 --count 32 --device cuda
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import harness, machine, workload
from benchmarks.harness import fmt, log

CORE_COUNTS = (2, 4, 16)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = harness.parser(__file__, __doc__)
    harness.add_common_arguments(parser, count=16)
    parser.add_argument("--batch", type=int, default=8, help="upscaler and device NL-means batch [default: 8]")
    return harness.parse_common(parser, argv)


def torch_nlm_rate(images: list, device: object, batch: int) -> float:
    import numpy as np

    from workers.ops.denoise import DenoiseSpec, denoise_on_device

    spec = DenoiseSpec()
    denoise_on_device(np.stack(images[:batch]), spec, device)  # warm-up
    started = time.perf_counter()
    for group in workload.chunks(images, batch):
        denoise_on_device(np.stack(group), spec, device)
    harness.synchronize(device)
    return len(images) / (time.perf_counter() - started)


def fidelity_row(label: str, images: list, device: object, batch: int) -> tuple[object, ...]:
    """How far the device port's output is from OpenCV's on ``images`` (same-size groups batched)."""
    from collections import defaultdict

    import numpy as np

    from workers.ops.denoise import DenoiseSpec, denoise_on_device, nlm_opencv
    from workers.ops.metrics import psnr

    spec = DenoiseSpec()
    by_shape: dict[tuple[int, ...], list] = defaultdict(list)
    for image in images:
        by_shape[image.shape].append(image)
    ours, ref = [], []
    for group in by_shape.values():
        for chunk in workload.chunks(group, batch):
            ours += list(denoise_on_device(np.stack(chunk), spec, device))
            ref += [nlm_opencv(image, spec) for image in chunk]
    worst = min(psnr(a, b) for a, b in zip(ours, ref, strict=True))
    differing = sum(int(np.count_nonzero(a != b)) for a, b in zip(ours, ref, strict=True)) / sum(a.size for a in ref)
    largest = max(int(np.abs(a.astype(int) - b).max()) for a, b in zip(ours, ref, strict=True))
    sizes = ", ".join(sorted({f"{shape[1]}x{shape[0]}" for shape in by_shape}))
    return label, len(images), sizes, "inf (identical)" if worst == float("inf") else f"{worst:.2f}", \
        f"{differing:.4%}", largest


def sample_inputs() -> list:
    """The sample dataset's test and validation inputs (none when the dataset is not there)."""
    from producer.evaluate import load_rgb

    folders = [harness.REPO / "dataset" / "test", harness.REPO / "dataset" / "val" / "val"]
    return [load_rgb(p) for p in sorted(p for folder in folders if folder.is_dir() for p in folder.glob("*.png"))]


def pipeline_run(args: argparse.Namespace, device: object, folder: Path, placement: str, cores: int,
                 tmp: Path) -> tuple[float, bytes]:
    """(images/s, submission.csv) of a whole embedded run with this placement, on ``cores`` CPU cores."""
    from producer.embedded import run_embedded
    from producer.planning import prepare_run
    from workers.run.context import StageContext
    from workers.run.keys import RunKeys
    from workers.run.manifest import PipelineSpec
    from workers.settings import Settings

    os.sched_setaffinity(0, set(range(cores)))
    settings = Settings(storage_url=str(tmp / f"{placement}-{cores}"), weights=str(args.weights),
                        device=str(device), cpu_workers=cores, gpu_batch_size=args.batch)
    ctx = StageContext(settings)
    ctx.warm_up()
    pipeline = dataclasses.replace(PipelineSpec(), denoise_on=placement)
    plan = prepare_run(settings, ctx.storage, str(folder), pipeline, show_progress=False)
    started = time.perf_counter()
    run_embedded(ctx, plan, show_progress=False)
    rate = len(plan.manifest.names) / (time.perf_counter() - started)
    return rate, ctx.storage.get(RunKeys(plan.run_id).submission)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = harness.start(args.device, args.torch_threads)
    device = bench.device
    from workers.ops.upscale import load_upscaler

    width, height = args.size
    images = workload.synthetic_images(args.count, width, height)
    upscaler = load_upscaler(args.weights, str(device))
    log("fidelity of the port against OpenCV")
    fidelity = [fidelity_row(f"synthetic (this run's {args.count} inputs)", images, device, args.batch)]
    sample = sample_inputs()
    if sample:
        fidelity.append(fidelity_row("dataset/test + dataset/val/val", sample, device, args.batch))
    log("NL-means: OpenCV, one core")
    opencv = workload.measure_nlm(images, threads=1)
    log("NL-means: PyTorch on the device")
    torch_rate = torch_nlm_rate(images, device, args.batch)
    log("upscaler alone")
    workload.warm_up_upscaler(upscaler, images, args.batch)
    upscale_rate = workload.measure_upscale(upscaler, images, args.batch).images_per_second

    available = len(os.sched_getaffinity(0))
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        folder = tmp / "inputs"
        workload.write_inputs(folder, images)
        all_cores = os.sched_getaffinity(0)
        try:
            for cores in [c for c in CORE_COUNTS if c <= available] or [available]:
                reference = None
                for placement in ("cpu", "gpu"):
                    log(f"pipeline: denoise on {placement}, {cores} cores")
                    rate, submission = pipeline_run(args, device, folder, placement, cores, tmp)
                    reference = reference or submission
                    same = "yes" if submission == reference else "NO"
                    rows.append((placement, cores, fmt(rate), f"{rate / upscale_rate:.0%}", same))
                    harness.record(args, f"pipeline, denoise on {placement}, {cores} cores", rate, "images/s",
                                  f"{rate / upscale_rate:.0%} of upscaler-only; submission identical: {same}")
        finally:
            os.sched_setaffinity(0, all_cores)

    harness.record(args, "NL-means, OpenCV, 1 core", opencv.images_per_second, "images/s")
    harness.record(args, f"NL-means, PyTorch port, batch {args.batch}", torch_rate, "images/s",
                  f"identical to OpenCV: {all(row[3].startswith('inf') for row in fidelity)}")
    harness.record(args, f"upscaler alone, batch {args.batch}", upscale_rate, "images/s")
    print(f"## Denoise placement: {args.count} images {width}x{height}\n")
    print(f"Fidelity of the PyTorch port on {machine.device_name(device)} against OpenCV "
          "(default settings h=7, hColor=7, 7, 21; PSNR of the worst image):\n")
    print(harness.markdown_table(("images", "count", "sizes", "PSNR vs OpenCV (dB)", "values differing",
                                 "largest difference"), fidelity))
    print()
    print(harness.markdown_table(("stage", "images/s"), [
        ("NL-means, OpenCV, 1 core", fmt(opencv.images_per_second)),
        (f"NL-means, PyTorch port on {machine.device_name(device)}, batch {args.batch}", fmt(torch_rate)),
        (f"upscaler alone, batch {args.batch}", fmt(upscale_rate)),
    ]))
    print()
    print(harness.markdown_table(("denoise on", "CPU cores", "pipeline images/s", "of upscaler-only",
                                 "submission identical to cpu"), rows))
    skipped = [c for c in CORE_COUNTS if c > available]
    if skipped:
        print(f"\n(core counts above this machine's {available} skipped: {skipped})")
    print()
    print(bench.upscaler_table(upscaler, args.weights, width, height))
    return 0


if __name__ == "__main__":
    sys.exit(main())
