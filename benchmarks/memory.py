"""Peak memory: of the GPU stage by input size, and of the report by the number of images in a run.

**Stage.** For each ``--megapixels`` size, two synthetic 4:3 images of that size go through one
``upscale_stage`` call (the GPU task's stage function: decode the input PNGs, upscale, submission
rows, PNG encode and store, the next image's upscale overlapping the last one's storing where the
batch limits allow) in a fresh subprocess, so one size's allocations never flatter the next. The
subprocess loads the upscaler and upscales a tiny warm-up image first; what is reported is its peak
RSS over the RSS it had just before (Linux ``VmHWM``, reset with ``/proc/self/clear_refs``), next to
the size of one 4x output as an uncompressed array. The pipeline has no denoiser, so the GPU stage
reads the inputs itself, as it does for the default preset: its memory does not depend on the
denoiser.

``--upscaler bicubic`` is the ``quality`` preset's upscaler (no model, minutes for 1-16 MP on two
cores); ``--upscaler compact`` runs ``realesr-animevideov3`` (SRVGG, ``--weights``), tiled above
TILE_MAX_PIXELS like any model: slow on a CPU, so give it smaller ``--megapixels`` there.

**Report.** For each ``--metas`` count, a local run with that many done images, each with its two
meta files (``meta/<stem>.denoise.json``, ``.upscale.json``, fields as the stages write them) and no
pixels, is read by ``collect_report_data`` in a fresh subprocess: its peak RSS over its RSS before.

    python -m benchmarks.memory --megapixels 1,2,4,8,16 --metas 10000,100000
    python -m benchmarks.memory --upscaler compact --megapixels 1,2 --metas 0
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import harness, workload
from benchmarks.harness import fmt, log

COMPACT_WEIGHTS = harness.DEFAULT_WEIGHTS_DIR / "realesr-animevideov3.pth"
MIB = 1 << 20
RUN, WARM_UP = "memory", "warm-up"
IMAGES_PER_SIZE = 2
QUICK_MEGAPIXELS, QUICK_METAS = "0.25,0.5", "200,2000"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = harness.parser(__file__, __doc__)
    parser.add_argument("--megapixels", default="1,2,4,8,16",
                        help="input sizes for the stage table, comma-separated; empty: none [default: 1,2,4,8,16]")
    parser.add_argument("--metas", default="10000,100000",
                        help="run sizes (images) for the report table, comma-separated; 0: none [default: 10000,100000]")
    parser.add_argument("--upscaler", choices=("bicubic", "compact"), default="bicubic",
                        help="bicubic (the quality preset's) or the compact SRVGG model [default: bicubic]")
    parser.add_argument("--weights", type=Path, default=COMPACT_WEIGHTS,
                        help="checkpoint of --upscaler compact [default: %(default)s]")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where the compact model runs [default: auto]")
    parser.add_argument("--torch-threads", type=int, default=0,
                        help="torch threads in the measured processes (0: torch's default) [default: 0]")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: --megapixels {QUICK_MEGAPIXELS} --metas {QUICK_METAS}")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: one measurement, as JSON
    args = parser.parse_args(argv)
    if args.quick:
        args.megapixels, args.metas = QUICK_MEGAPIXELS, QUICK_METAS
    args.megapixels = [float(m) for m in args.megapixels.split(",") if m.strip()]
    args.metas = [int(n) for n in args.metas.split(",") if int(n) > 0]
    if any(m <= 0 for m in args.megapixels):
        parser.error("--megapixels must be positive")
    return args


# -- measuring (in the child) -------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def _reset_peak() -> None:
    """Start VmHWM again from the current RSS (Linux >= 4.0); without it the peak counts from start-up."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        log("cannot reset VmHWM: peaks count from the process start")


def measured(work: Any) -> dict[str, float]:
    """Run ``work()`` and return RSS before, peak RSS during, and seconds."""
    _reset_peak()
    before = _status_kib("VmRSS")
    started = time.perf_counter()
    work()
    return {"before_mib": before / 1024, "peak_mib": _status_kib("VmHWM") / 1024,
            "seconds": time.perf_counter() - started}


def stage_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Warm up on the tiny image, then measure ``upscale_stage`` on the big one."""
    from workers.run.context import StageContext
    from workers.run.stages import upscale_stage
    from workers.settings import Settings

    harness.start(spec["device"], spec["threads"])
    ctx = StageContext(Settings(storage_url=spec["store"], weights=spec["weights"], device=spec["device"]))
    outcomes = upscale_stage(ctx, WARM_UP, spec["names"][:1])  # loads the model
    result = measured(lambda: outcomes.extend(upscale_stage(ctx, RUN, spec["names"])))
    if {o.status for o in outcomes} != {"done"}:
        raise RuntimeError(f"upscale_stage: {outcomes}")
    gpu = {}
    if spec["device"] != "cpu":
        import torch

        if torch.cuda.is_available():
            gpu = {"gpu_peak_mib": torch.cuda.max_memory_allocated() / MIB}
    return {**result, **gpu}


def report_child(spec: dict[str, Any]) -> dict[str, Any]:
    from workers.io.storage import LocalStorage
    from workers.report import collect_report_data

    store = LocalStorage(spec["store"])
    return measured(lambda: collect_report_data(store, store, RUN, threads=4))


def run_child(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement in a fresh interpreter."""
    result = subprocess.run([sys.executable, "-m", "benchmarks.memory", "--child", json.dumps({"kind": kind, **spec})],
                            capture_output=True, text=True, timeout=3600, cwd=harness.REPO)
    if result.returncode != 0:
        raise RuntimeError(f"{kind} measurement failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# -- setting up (in the parent) -----------------------------------------------------------------------


def size_for(megapixels: float) -> tuple[int, int]:
    """A 4:3 (width, height) with about ``megapixels`` million pixels, never above it."""
    width = max(4, int(math.sqrt(megapixels * 1e6 * 4 / 3)))
    return width, max(3, int(megapixels * 1e6 // width))


def write_stage_run(store: Path, megapixels: float, upscaler: str) -> list[str]:
    """The two runs the child processes, a tiny warm-up and the measured one, each with its input PNGs."""
    from workers.io.imageio import encode_png
    from workers.io.storage import LocalStorage, storage_url_for
    from workers.ops.denoise import DenoiseSpec
    from workers.run.manifest import PipelineSpec, RunManifest, save_manifest

    storage = LocalStorage(store)
    names = [f"test_{i:05d}.png" for i in range(1, IMAGES_PER_SIZE + 1)]
    pipeline = PipelineSpec(denoise=DenoiseSpec(method="none"), upscaler="bicubic" if upscaler == "bicubic" else "model")
    for run_id, (width, height) in ((WARM_UP, (16, 12)), (RUN, size_for(megapixels))):
        inputs = LocalStorage(store / "inputs" / run_id)
        save_manifest(storage, RunManifest(run_id, storage_url_for(store / "inputs" / run_id), tuple(names), pipeline,
                                           upscaler))
        for name, image in zip(names, workload.synthetic_images(len(names), width, height), strict=True):
            inputs.put(name, encode_png(image))
    return names


def write_metas(store: Path, count: int) -> None:
    """A run of ``count`` done images: the manifest and each image's two meta files (plain writes: no
    fsync per file, which only the set-up would pay)."""
    from workers.io.storage import storage_url_for
    from workers.run.keys import RunKeys
    from workers.run.manifest import PipelineSpec, RunManifest, now_iso

    keys = RunKeys(RUN)
    names = [f"test_{i:06d}.png" for i in range(count)]
    manifest = RunManifest(RUN, storage_url_for(store / "inputs"), tuple(names), PipelineSpec(), "file:bench")
    (store / keys.manifest).parent.mkdir(parents=True)
    (store / keys.manifest).write_bytes(manifest.to_json())
    (store / keys.prefix("meta")).mkdir()
    common_fields = {"worker": "bench-host", "at": now_iso(), "code_version": "0.1.0"}
    for i, name in enumerate(names):
        denoise = {"stage": "denoise", **common_fields, "seconds": 0.05 + i % 7 / 100, "width": 256, "height": 160,
                   "input_bytes": 98_765}
        upscale = {"stage": "upscale", **common_fields, "seconds": 0.02 + i % 5 / 100, "batch": 8,
                   "model": "hf:danhtran2mind/Real-ESRGAN-Anime-finetuning/Real-ESRGAN-Anime-finetuning.pth@main",
                   "model_sha256": "0" * 64, "device": "cuda:0", "out_width": 1024, "out_height": 640}
        for stage, meta in (("denoise", denoise), ("upscale", upscale)):
            (store / keys.meta(name, stage)).write_text(json.dumps(meta))


# -- tables -------------------------------------------------------------------------------------------


def stage_rows(args: argparse.Namespace, device: str, weights: str) -> list[tuple[object, ...]]:
    rows = []
    for megapixels in args.megapixels:
        width, height = size_for(megapixels)
        output_mib = 16 * width * height * 3 / MIB
        with tempfile.TemporaryDirectory(prefix="memory-bench-") as tmp:
            log(f"stage: {width}x{height} ({width * height / 1e6:.2f} MP) with {args.upscaler}")
            names = write_stage_run(Path(tmp), megapixels, args.upscaler)
            result = run_child("stage", {"store": tmp, "names": names, "weights": weights, "device": device,
                                         "threads": args.torch_threads})
        over = result["peak_mib"] - result["before_mib"]
        rows.append((fmt(width * height / 1e6), f"{width}x{height}", fmt(output_mib), fmt(result["before_mib"]),
                     fmt(result["peak_mib"]), fmt(over), f"{over / output_mib:.2f}x",
                     fmt(result["gpu_peak_mib"]) if "gpu_peak_mib" in result else "-", fmt(result["seconds"])))
    return rows


def report_rows(args: argparse.Namespace) -> list[tuple[object, ...]]:
    rows = []
    for count in args.metas:
        with tempfile.TemporaryDirectory(prefix="memory-bench-") as tmp:
            log(f"report: {count} images, {2 * count} meta files")
            write_metas(Path(tmp), count)
            result = run_child("report", {"store": tmp})
        over = result["peak_mib"] - result["before_mib"]
        rows.append((f"{count:,}", f"{2 * count:,}", fmt(result["before_mib"]), fmt(result["peak_mib"]), fmt(over),
                     fmt(1024 * over / count), fmt(result["seconds"])))
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps((stage_child if spec.pop("kind") == "stage" else report_child)(spec)))
        return 0
    bench = harness.start(args.device)
    device = bench.device
    weights = str(args.weights) if args.upscaler == "compact" else ""
    if args.megapixels:
        model = f"{args.weights.name} (compact SRVGG)" if weights else "none (bicubic x4, the quality preset's)"
        print(f"## Peak RSS of the GPU stage (`upscale_stage`, {IMAGES_PER_SIZE} same-size images) by input size: "
              f"{model} on {device.type}\n")
        print(harness.markdown_table(
            ["input MP", "input", "4x output MiB", "RSS before MiB", "peak RSS MiB", "peak - before MiB",
             "vs output", "GPU peak MiB", "seconds"], stage_rows(args, device.type, weights)))
        print("\nOne fresh process per size, after the model and a warm-up image; default GPU_BATCH_SIZE and "
              "GPU_BATCH_PIXELS. \"4x output MiB\" is one uncompressed 4x image (48 bytes per input pixel); "
              "\"vs output\" is what the stage needs on top of its resting RSS, in such images.\n")
    if args.metas:
        print("## Peak RSS of the report (`collect_report_data`) by run size: meta files only, no pixels\n")
        print(harness.markdown_table(
            ["images", "meta files", "RSS before MiB", "peak RSS MiB", "peak - before MiB", "KiB per image",
             "seconds"], report_rows(args)))
        print("\nOne fresh process per run size; IO_THREADS=4; meta files on the local filesystem.\n")
    print(bench.machine_table(f"{args.upscaler}: {weights or 'no checkpoint'}",
                              ", ".join(f"{m:g} MP" for m in args.megapixels) or "n/a"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
