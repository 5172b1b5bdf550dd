"""End-to-end throughput: the seed's serial loop vs the embedded pipeline vs the distributed system.

All modes process the same synthetic images (written as PNG files) in one run of this script:

(a) the seed's loop, reproduced: per image PIL open + RGB, OpenCV NL-means (7, 7, 7, 21) on BGR,
    Real-ESRGAN the way stablepy calls it, Lanczos resize to a multiple of 8, PNG save, submission
    row. How stablepy calls the model (read from R3gm/stablepy, ``stablepy/upscalers/``):
    ``UpscalerCommon.__init__`` loads the checkpoint once with ``spandrel.ModelLoader(device=...)``
    and ``model.half()`` when half is asked for (``half=True`` on CUDA in ``high_resolution.py``);
    every ``do_upscale`` then starts with ``release_resources_upscaler()`` =
    ``torch.cuda.empty_cache(); gc.collect()`` and runs ``upscale_pil_patch``: numpy RGB->BGR,
    ``/255`` in float64, ``.to(device, dtype)``, one forward at batch 1, ``.float().cpu().clamp_(0, 1)``,
    ``*255``, round, BGR->RGB; ``Upscaler.upscale`` Lanczos-resizes to ``floor(4w/8)*8 x floor(4h/8)*8``.
    So what is "re-set per call" is the CUDA cache and a full garbage collection, not the weights.
    Only stablepy's diffusion pipeline (``process_images_high_resolution``) builds a new upscaler,
    i.e. reloads the checkpoint, once per pipeline call; ``--seed-reload`` times that variant too.
(b) the embedded default: ``producer.planning.prepare_run`` + ``producer.embedded.run_embedded``
    on a temporary local store (what ``producer enqueue DIR`` does with no broker).
(c) ``--distributed``: real redis-server, SeaweedFS S3 and two Celery workers (one CPU worker with
    one process per core, one GPU-queue worker, solo pool), started with the integration tests'
    helpers; the producer plans, uploads, enqueues and waits in this process. Server and worker
    start-up (and one warm-up run of one tiny image) are timed separately and excluded.

Model loading is excluded everywhere (stablepy does not repeat it per image, the workers do it
once per process). Then the per-stage cost: NL-means ms per megapixel on one thread, and the
upscaler's ms per megapixel and achieved TFLOP/s against the device's peak.

    python -m benchmarks.throughput --size 256x160 --count 8 [--distributed] [--device cuda]
"""

from __future__ import annotations

import argparse
import csv
import gc
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import harness, machine, workload
from benchmarks.harness import fmt, log


@dataclass
class ModeResult:
    label: str
    images: int
    seconds: float
    note: str = ""
    baseline: str = "(a)"  # the serial loop doing the same work, that this mode is compared with

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds


@dataclass
class ModeRunner:
    label: str
    run: Callable[[int], float]  # round number -> seconds for every image once
    baseline: str = "(a)"


def run_interleaved(runners: list[ModeRunner], rounds: int) -> dict[str, float]:
    """Each mode's seconds summed over ``rounds`` interleaved rounds (ABBA: :func:`harness.interleaved`)."""
    totals = {runner.label: 0.0 for runner in runners}
    for number, runner in harness.interleaved(runners, rounds, lambda runner: runner.label.split(" ", 1)[0]):
        totals[runner.label] += runner.run(number)
    return totals


@dataclass
class SeedBreakdown:
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def add(self, step: str, started: float) -> float:
        now = time.perf_counter()
        self.seconds[step] += now - started
        return now


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = harness.parser(__file__, __doc__)
    harness.add_common_arguments(parser, count=8)
    parser.add_argument("--distributed", action="store_true",
                        help="also time the distributed system (needs redis-server and weed, as the integration tests)")
    parser.add_argument("--gpu-batch-size", type=int, default=None,
                        help="GPU_BATCH_SIZE for (b) and (c) [default: the Settings default]")
    parser.add_argument("--cpu-workers", type=int, default=0,
                        help="denoising threads of (b) and processes of (c)'s CPU worker [default: one per core]")
    parser.add_argument("--stage-images", type=int, default=None,
                        help="images for the per-stage upscale timing [default: min(count, 4); CUDA: count]")
    parser.add_argument("--seed-reload", action="store_true",
                        help="also time the seed loop reloading the checkpoint per image (stablepy's diffusion-pipeline path)")
    parser.add_argument("--learned", type=Path, default=None, nargs="?", const=harness.SHIPPED_MODEL,
                        help="also time (d), the embedded pipeline with --preset learned running this checkpoint (no "
                        "NL-means), against (l), the serial loop doing the same work [default when given without a "
                        "path: the shipped model, models/lowlight-compact.safetensors]")
    parser.add_argument("--compile", default="off", choices=("off", "default", "reduce-overhead", "max-autotune"),
                        help="also time (b') = (b) with TORCH_COMPILE set to this mode (compilation excluded, reported)")
    parser.add_argument("--gpu-stage", action="store_true",
                        help="also time the GPU stage alone (upscale_stage) with the --learned model: how much of its "
                             "wall time is compute and how much I/O, with the inputs loaded one at a time "
                             "(SERIAL_LOADS) and with the I/O arranged as production arranges it")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every mode this many times, in order then in reverse order (ABBA), and sum: a load "
                             "that drifts during the run weighs on every mode alike [default: 1]")
    parser.add_argument("--skip-seed", action="store_true", help="leave out (a) and (l)")
    parser.add_argument("--skip-embedded", action="store_true", help="leave out (b)")
    return harness.parse_common(parser, argv)


# -- (a) the seed's loop -------------------------------------------------------------------------------


def load_seed_model(weights: Path, device: Any) -> Any:
    """As stablepy's ``load_spandrel_model``: spandrel on the device, ``.half()`` on CUDA, eval."""
    import spandrel

    descriptor = spandrel.ModelLoader(device=device).load_from_file(str(weights))
    if device.type == "cuda" and descriptor.supports_half:
        descriptor.model.half()
    descriptor.model.eval()
    return descriptor


def release_resources(device: Any) -> None:
    """stablepy's ``release_resources_upscaler``, run before every upscale."""
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
    gc.collect()


def seed_upscale_patch(descriptor: Any, image: Any, bgr: bool = True) -> Any:
    """stablepy's ``upscale_pil_patch`` without tiles: BGR float64 in, one forward, BGR->RGB uint8 out
    (``bgr`` False: the same in RGB, as a model trained on RGB wants)."""
    import numpy as np
    import torch
    from PIL import Image

    param = next(descriptor.model.parameters())
    with torch.inference_mode():
        order = slice(None, None, -1 if bgr else 1)
        arr = np.array(image.convert("RGB"))[:, :, order]
        arr = np.ascontiguousarray(np.transpose(arr, (2, 0, 1))) / 255
        tensor = torch.from_numpy(arr).unsqueeze(0).to(device=param.device, dtype=param.dtype)
        out = descriptor(tensor).squeeze(0).float().cpu().clamp_(0, 1).numpy()
        out = (255.0 * np.moveaxis(out, 0, 2)).round().astype(np.uint8)[:, :, order]
        return Image.fromarray(np.ascontiguousarray(out), "RGB")


def run_seed_loop(inputs: list[Path], out_dir: Path, weights: Path, device: Any, descriptor: Any | None,
                  cv2_threads: int, breakdown: SeedBreakdown, seed_stages: bool = True) -> tuple[float, float]:
    """Return (seconds, seconds spent loading models inside the loop); fills ``breakdown``.

    ``descriptor`` None reloads the checkpoint for every image. ``seed_stages`` False: the same loop
    doing the learned preset's work (no NL-means, RGB feed), the serial baseline of (d).
    """
    import cv2
    import numpy as np
    from PIL import Image

    cv2.setNumThreads(cv2_threads)  # the seed leaves it at OpenCV's default
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[list[object]] = []
    loading = 0.0
    started = time.perf_counter()
    for path in inputs:
        t = time.perf_counter()
        image = Image.open(path).convert("RGB")
        t = breakdown.add("decode (PIL open + convert RGB)", t)
        if seed_stages:
            bgr = cv2.cvtColor(np.array(image), cv2.COLOR_RGB2BGR)
            clean = cv2.fastNlMeansDenoisingColored(bgr, None, 7, 7, 7, 21)
            image = Image.fromarray(cv2.cvtColor(clean, cv2.COLOR_BGR2RGB))
            t = breakdown.add(f"NL-means (OpenCV, {cv2_threads} threads)", t)
        model = descriptor
        if model is None:
            model = load_seed_model(weights, device)
            loading += time.perf_counter() - t
            t = breakdown.add("checkpoint reload", t)
        release_resources(device)
        t = breakdown.add("release (empty_cache + gc.collect)", t)
        dest = (image.width * 4 // 8 * 8, image.height * 4 // 8 * 8)
        hr = seed_upscale_patch(model, image, bgr=seed_stages)
        t = breakdown.add(f"upscale ({'BGR' if seed_stages else 'RGB'} float64 -> forward -> uint8)", t)
        if hr.size != dest:
            hr = hr.resize(dest, resample=Image.Resampling.LANCZOS)
        t = breakdown.add("Lanczos resize to a multiple of 8", t)
        hr.save(out_dir / path.name)
        t = breakdown.add("PNG save", t)
        values = np.array(hr.convert("L")).flatten()[::8]
        rows.append([path.stem.replace("test_", "gt_"), *values.tolist()])
        breakdown.add("submission row (convert L, flat[::8])", t)
    t = time.perf_counter()
    with (out_dir / "submission.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["ID", *(f"pixel_{i}" for i in range(len(rows[0]) - 1))])
        writer.writerows(rows)
    breakdown.add("submission row (convert L, flat[::8])", t)
    return time.perf_counter() - started, loading


# -- (b) embedded ----------------------------------------------------------------------------------------


def pipeline_settings(args: argparse.Namespace, storage_url: str, compile_mode: str = "off") -> Any:
    from workers.settings import Settings

    values: dict[str, Any] = {"storage_url": storage_url, "weights": str(args.weights), "device": args.device,
                              "cpu_workers": args.cpu_workers, "torch_compile": compile_mode}
    if args.gpu_batch_size:
        values["gpu_batch_size"] = args.gpu_batch_size
    return Settings(**values)


def learned_pipeline(ctx: Any, learned: Path) -> Any:
    """The learned preset running ``learned`` as the run's own model (published into the run store)."""
    from workers.io.storage import LocalStorage
    from workers.run.presets import PresetInputs, build_pipeline
    from workers.run.resolve import publish_checkpoint
    from workers.training.artifacts import TrainingOutput

    checkpoint = publish_checkpoint(TrainingOutput(LocalStorage(learned.parent), learned.name), ctx.storage)
    return build_pipeline("learned", PresetInputs(checkpoint=checkpoint))


def run_embedded_mode(args: argparse.Namespace, input_dir: Path, store: Path, images: list[Any],
                      learned: Path | None = None, compile_mode: str = "off") -> tuple[float, float]:
    """Return (seconds for plan + run + aggregate, model load seconds, warm-up included). ``learned``:
    run that checkpoint as the run's own model (preset learned) instead of NL-means + WEIGHTS."""
    from producer.embedded import run_embedded
    from producer.planning import prepare_run
    from workers.run.context import StageContext
    from workers.run.manifest import PipelineSpec

    ctx = StageContext(pipeline_settings(args, str(store), compile_mode))
    pipeline = PipelineSpec() if learned is None else learned_pipeline(ctx, learned)
    upscaler, load_s = harness.timed(lambda: ctx.upscaler_for(pipeline))
    batch = ctx.settings.gpu_batch_size if upscaler.device.type == "cuda" else ctx.settings.cpu_batch_size
    _, warm_s = harness.timed(lambda: workload.warm_up_upscaler(upscaler, images, batch, full=compile_mode != "off"))
    load_s += warm_s
    started = time.perf_counter()
    plan = prepare_run(ctx.settings, ctx.storage, str(input_dir), pipeline, show_progress=False)
    result = run_embedded(ctx, plan, show_progress=False)
    seconds = time.perf_counter() - started
    if result.written != len(images):
        raise RuntimeError(f"embedded run wrote {result.written} of {len(images)} rows; see {store}")
    return seconds, load_s


# -- the GPU stage alone ------------------------------------------------------------------------------


@dataclass
class GpuStageResult:
    label: str
    images: int
    seconds: float  # wall time of the upscale_stage calls
    compute: float  # of which inside the upscaler (the device's work, transfers and rounding included)

    @property
    def io_share(self) -> float:
        return 1 - self.compute / self.seconds


def gpu_stage_schedules(device: Any) -> list[tuple[str, Any]]:
    from workers.run.stages import SERIAL_LOADS, GpuSchedule

    before = ("before: inputs fetched and decoded one at a time, then compute; stores overlap the next batch",
              SERIAL_LOADS)
    if device.type == "cuda":
        return [before, ("now: loads on the I/O threads ahead of the batch, stores overlap the next batch",
                         GpuSchedule.for_device("cuda"))]
    return [before,
            ("now, CPU: loads on the I/O threads, then compute, then stores: taking turns", GpuSchedule.for_device("cpu")),
            ("now, GPU arrangement run on this CPU: loads and stores overlap compute", GpuSchedule.for_device("cuda"))]


def measure_gpu_stage(args: argparse.Namespace, tmp: Path, images: list[Any], device: Any) -> list[GpuStageResult]:
    """``upscale_stage`` (what a GPU worker runs per batch) over every image, in batches of the
    production size, once per I/O arrangement; compute is the time spent inside the upscaler."""
    from producer.planning import prepare_run
    from workers.run import stages
    from workers.run.context import StageContext

    results = []
    for label, schedule in gpu_stage_schedules(device):
        ctx = StageContext(pipeline_settings(args, str(tmp / f"stage-{len(results)}")))
        pipeline = learned_pipeline(ctx, args.learned)
        upscaler = ctx.upscaler_for(pipeline)
        batch = ctx.settings.gpu_batch_size if device.type == "cuda" else ctx.settings.cpu_batch_size
        workload.warm_up_upscaler(upscaler, images, batch)
        plan = prepare_run(ctx.settings, ctx.storage, str(tmp / "in"), pipeline, show_progress=False)
        compute = [0.0]
        real = stages.upscale_images

        def timed_upscale(*a: Any, real: Any = real, compute: list[float] = compute) -> Any:
            started = time.perf_counter()
            try:
                return real(*a)
            finally:
                compute[0] += time.perf_counter() - started

        names = [*plan.to_denoise, *plan.to_upscale]  # the learned preset has nothing for the CPU stage to do
        log(f"GPU stage, {label.split(':')[0]}: {len(names)} images")
        stages.upscale_images = timed_upscale
        try:
            started = time.perf_counter()
            for batch_names in workload.chunks(names, ctx.settings.gpu_batch_size):
                outcomes = stages.upscale_stage(ctx, plan.run_id, batch_names, schedule)
                if {o.status for o in outcomes} != {"done"}:
                    raise RuntimeError(f"GPU stage: {outcomes}")
            seconds = time.perf_counter() - started
        finally:
            stages.upscale_images = real
        results.append(GpuStageResult(label, len(names), seconds, compute[0]))
        ctx.io_pool.shutdown()
    return results


def report_gpu_stage(results: list[GpuStageResult]) -> str:
    base = results[0]
    rows = [(r.label, r.images, f"{r.seconds:.2f}", f"{r.compute:.2f}", f"{r.io_share:.0%}",
             fmt(r.images / r.seconds), f"{base.seconds / r.seconds:.2f}x") for r in results]
    return harness.markdown_table(("I/O arrangement", "images", "wall s", "compute s", "I/O share of wall",
                                  "images/s", "vs before"), rows)


# -- (c) distributed -------------------------------------------------------------------------------------


def enqueue_and_wait(env: dict[str, str], input_dir: Path, expected: int) -> float:
    """What ``producer enqueue DIR`` does with a broker: plan (and upload), enqueue, wait for the submission."""
    from producer import dispatch
    from producer.planning import prepare_run
    from workers.run.context import StageContext
    from workers.run.manifest import PipelineSpec
    from workers.settings import Settings

    settings = Settings.from_env(env)
    started = time.perf_counter()
    ctx = StageContext(settings)
    plan = prepare_run(settings, ctx.storage, str(input_dir), PipelineSpec(), show_progress=False)
    dispatch.enqueue_plan(settings, ctx.storage, plan)
    result = dispatch.wait_for_run(settings, ctx.storage, plan)
    seconds = time.perf_counter() - started
    if result.written != expected:
        raise RuntimeError(f"distributed run {plan.run_id} wrote {result.written} of {expected} rows")
    return seconds


def run_distributed_mode(args: argparse.Namespace, tmp: Path, input_dir: Path, count: int) -> tuple[float, dict[str, float]]:
    """(seconds of the timed run, start-up seconds by what started) on redis-server, S3 and two workers:
    one CPU worker with a process per core (or ``--cpu-workers``), one GPU-queue worker."""
    extra = {"GPU_BATCH_SIZE": str(args.gpu_batch_size)} if args.gpu_batch_size else {}
    with harness.servers(tmp, args.weights.resolve(), **extra) as servers:
        env = {**servers.env, "DEVICE": args.device}  # cluster_env pins the tests to the CPU
        if args.torch_threads:
            env["OMP_NUM_THREADS"] = str(args.torch_threads)
        startup = dict(servers.startup)
        processes = args.cpu_workers or machine.core_count()
        started = time.perf_counter()
        with harness.celery_workers(env, tmp / "logs", processes):
            startup[f"workers (cpu x{processes} processes, gpu solo; model load)"] = time.perf_counter() - started
            warm_dir = tmp / "warm-up"
            workload.write_inputs(warm_dir, workload.synthetic_images(1, 8, 8, seed=99))
            log("distributed: warm-up run (1 image of 8x8)")
            startup["warm-up run (1 image of 8x8)"] = enqueue_and_wait(env, warm_dir, 1)
            log(f"distributed: timing {count} images")
            seconds = enqueue_and_wait(env, input_dir, count)
    return seconds, startup


# -- report ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import cv2

    from workers.ops.upscale import load_upscaler
    from workers.settings import Settings

    default_cv2_threads = cv2.getNumThreads()
    bench = harness.start(args.device, args.torch_threads)
    device = bench.device
    width, height = args.size
    images = workload.synthetic_images(args.count, width, height)
    batch_size = args.gpu_batch_size or Settings().gpu_batch_size
    threads = args.cpu_workers or machine.core_count()
    batch_label = f"GPU_BATCH_SIZE {batch_size}" if device.type == "cuda" else f"CPU_BATCH_SIZE {Settings().cpu_batch_size}"
    gpu_stage: list[GpuStageResult] = []
    learned_breakdown = SeedBreakdown()
    learned_macs = 0.0
    load_notes: list[tuple[str, str]] = []
    modes: list[ModeResult] = []
    breakdown = SeedBreakdown()
    reload_breakdown = SeedBreakdown()
    startup: dict[str, float] = {}

    tmp = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    try:
        inputs = workload.write_inputs(tmp / "in", images)
        upscaler, load_s = harness.timed(lambda: load_upscaler(args.weights, args.device))
        load_notes.append(("model load, production loader (excluded)", f"{load_s:.2f} s"))
        macs = workload.conv_macs_per_pixel(upscaler.descriptor.model, upscaler.device, upscaler.dtype)

        runners: list[ModeRunner] = []
        if not args.skip_seed:
            seed_model, load_s = harness.timed(lambda: load_seed_model(args.weights, device))
            load_notes.append(("model load, stablepy-style (excluded from (a))", f"{load_s:.2f} s"))
            seed_upscale_patch(seed_model, _pil(images[0] if device.type == "cuda" else images[0][:8, :8]))
            runners.append(ModeRunner("(a) seed serial loop (stablepy-style upscale, batch 1, BGR)", lambda r: run_seed_loop(
                inputs, tmp / f"seed-out-{r}", args.weights, device, seed_model, default_cv2_threads, breakdown)[0]))
            if args.seed_reload:
                runners.append(ModeRunner("(a') seed loop, checkpoint reloaded per image", lambda r: run_seed_loop(
                    inputs, tmp / f"seed-reload-out-{r}", args.weights, device, None, default_cv2_threads,
                    reload_breakdown)[0]))

        def embedded(label: str, learned: Path | None = None, compile_mode: str = "off") -> Callable[[int], float]:
            def run(r: int) -> float:
                seconds, load_s = run_embedded_mode(args, tmp / "in", tmp / f"store-{len(load_notes)}-{r}", images,
                                                    learned, compile_mode)
                if r == 0:
                    load_notes.append((f"model load + warm-up{', compilation' if compile_mode != 'off' else ''} "
                                       f"(excluded from {label})", f"{load_s:.2f} s"))
                return seconds
            return run

        if not args.skip_embedded:
            runners.append(ModeRunner(f"(b) embedded (producer enqueue, no broker; {threads} denoise threads, "
                                      f"{batch_label})", embedded("(b)")))
        if args.compile != "off":
            runners.append(ModeRunner(f"(b') embedded, TORCH_COMPILE={args.compile} ({batch_label})",
                                      embedded("(b')", compile_mode=args.compile)))
        if args.learned:
            if not args.skip_seed:
                loop_model = load_seed_model(args.learned, device)
                learned_macs = workload.conv_macs_per_pixel(loop_model.model, device, next(loop_model.model.parameters()).dtype)
                seed_upscale_patch(loop_model, _pil(images[0] if device.type == "cuda" else images[0][:8, :8]), False)
                runners.append(ModeRunner(
                    f"(l) serial loop as (a), the learned preset's work ({args.learned.name}, no NL-means, RGB)",
                    lambda r: run_seed_loop(inputs, tmp / f"loop-learned-out-{r}", args.learned, device, loop_model,
                                            default_cv2_threads, learned_breakdown, seed_stages=False)[0], "(l)"))
            runners.append(ModeRunner(f"(d) embedded, --preset learned ({args.learned.name}, no NL-means, "
                                      f"{batch_label})", embedded("(d)", args.learned), "(l)"))
        totals = run_interleaved(runners, args.rounds)
        modes += [ModeResult(runner.label, args.count * args.rounds, totals[runner.label], baseline=runner.baseline)
                  for runner in runners]
        if args.learned and args.gpu_stage:
            gpu_stage = measure_gpu_stage(args, tmp, images, device)

        if args.distributed:
            log("(c) distributed: starting redis-server, S3 and two Celery workers")
            seconds, startup = run_distributed_mode(args, tmp, tmp / "in", args.count)
            processes = args.cpu_workers or machine.core_count()
            modes.append(ModeResult(f"(c) distributed (Redis + S3; CPU worker x{processes} processes, "
                                    f"GPU-queue worker solo, GPU_BATCH_SIZE {batch_size})", args.count, seconds))

        log("per-stage cost")
        nlm = workload.measure_nlm(images, threads=1)
        stage_n = args.stage_images or (args.count if device.type == "cuda" else min(args.count, 4))
        stages = [workload.measure_upscale(upscaler, images[:stage_n], 1)]
        if device.type == "cuda" and batch_size > 1 and stage_n > 1:
            stages.append(workload.measure_upscale(upscaler, images[:stage_n], min(batch_size, stage_n)))
        cv2.setNumThreads(default_cv2_threads)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    peak = machine.device_peak(upscaler.device)
    rounds = f", {args.rounds} interleaved rounds (ABBA)" if args.rounds > 1 else ""
    print(f"## Throughput: {args.count} images {width}x{height} -> {4 * width}x{4 * height}{rounds}\n")
    print(report_modes(modes))
    if load_notes or startup:
        print()
        print(harness.markdown_table(("excluded from the timings", "seconds"),
                                    load_notes + [(f"(c) start-up: {k}", f"{v:.2f} s") for k, v in startup.items()]))
    for label, parts, model_macs in (("(a)", breakdown, macs), ("(a')", reload_breakdown, macs),
                                     ("(l)", learned_breakdown, learned_macs)):
        if parts.seconds:
            print(f"\n### Where the serial loop's time goes {label}\n")
            print(report_breakdown(parts, model_macs, args.count * width * height))
    if gpu_stage:
        print(f"\n### The GPU stage alone ({args.learned.name}, upscale_stage in batches of the production size): "
              "compute vs I/O\n")
        print(report_gpu_stage(gpu_stage))
        print("\nI/O = fetching (existence checks, GET) and decoding the inputs, encoding the 4x PNG and storing "
              "it, the row and the meta: the wall time outside the upscaler.")
        for result in gpu_stage:
            harness.record(args, f"GPU stage I/O share, {result.label.split(':')[0]}", 100 * result.io_share, "%")
    record_modes(args, modes)
    print("\n### Per-stage cost\n")
    print(report_stages(nlm, stages, macs, peak))
    best = max(stages, key=lambda s: s.images_per_second)
    needed = best.images_per_second * nlm.seconds / nlm.images
    print(f"\nCPU cores of NL-means one {upscaler.device.type.upper()} upscaler keeps busy: "
          f"{fmt(best.images_per_second)} img/s x {fmt(nlm.seconds / nlm.images)} s/img = **{fmt(needed)} cores** "
          f"(at {width}x{height}, default NL-means settings).")
    print(f"\nModel: {fmt(macs / 1e6)} M multiply-adds per input pixel (Conv2d layers, counted); "
          f"peak: {peak.assumption}.\n")
    print(bench.upscaler_table(upscaler, args.weights, width, height))
    return 0


def _pil(rgb: Any) -> Any:
    from PIL import Image

    return Image.fromarray(rgb)


def report_modes(modes: list[ModeResult]) -> str:
    """Each mode's images/s and its ratio to the serial loop doing the same work ((a), or (l) for the
    learned preset), measured in the same run."""
    rows = []
    for m in modes:
        base = next((b for b in modes if b.label.startswith(m.baseline + " ")), None)
        ratio = f"{m.images_per_second / base.images_per_second:.2f}x vs {m.baseline}" if base else "n/a"
        rows.append((m.label, m.images, f"{m.seconds:.2f}", fmt(m.images_per_second), ratio, m.note))
    return harness.markdown_table(("mode", "images", "wall s", "images/s", "vs its serial loop", "note"), rows)


def record_modes(args: argparse.Namespace, modes: list[ModeResult]) -> None:
    for m in modes:
        key = m.label.split(" ", 1)[0]
        harness.record(args, f"{key} images/s", m.images_per_second, "images/s", m.label)
        base = next((b for b in modes if b.label.startswith(m.baseline + " ")), None)
        if base is not None and base is not m:
            harness.record(args, f"{key} vs {m.baseline}", m.images_per_second / base.images_per_second, "x")


def report_breakdown(parts: SeedBreakdown, macs: float, pixels: int) -> str:
    total = sum(parts.seconds.values())
    rows = []
    for step, seconds in parts.seconds.items():
        note = ""
        if step.startswith("upscale"):
            note = f"{2 * macs * pixels / seconds / 1e12:.4f} TFLOP/s"
        rows.append((step, f"{seconds:.3f}", f"{100 * seconds / total:.1f}%", note))
    return harness.markdown_table(("step", "seconds", "share", "achieved"), rows)


def report_stages(nlm: workload.StageTiming, stages: list[workload.StageTiming], macs: float,
                  peak: machine.Peak) -> str:
    rows = [(nlm.label, nlm.images, fmt(nlm.ms_per_image), fmt(nlm.ms_per_megapixel), fmt(nlm.images_per_second),
             "-", "-")]
    for s in stages:
        achieved = workload.tflops(macs, s)
        share = f"{100 * achieved * 1e12 / peak.flops:.1f}%" if peak.flops else "n/a"
        rows.append((s.label, s.images, fmt(s.ms_per_image), fmt(s.ms_per_megapixel), fmt(s.images_per_second),
                     f"{achieved:.4f}", share))
    return harness.markdown_table(
        ("stage", "images", "ms/image", "ms per input MP", "images/s", "TFLOP/s", "of peak"), rows)


if __name__ == "__main__":
    sys.exit(main())
