"""What capacity buys once data is not the limit: architectures pretrained on the photo corpus for
equal wall time, then scored the same way.

Each candidate runs `producer train --photos CORPUS` for ``--minutes`` under the competition's
forward model, in bf16 autocast where the CPU has it natively (the precision rule's ``auto``), one thread each
(pinned to a core with ``taskset`` where they divide the cores evenly), ``--parallel`` at a time, so every candidate gets the same CPU
for the same time. A candidate starts from the public checkpoint of its architecture where one exists
(``../shared/weights``), else from a seeded random initialisation (``workers/ops/architectures.py``).
All are scored on the same held-back photo crops (the corpus split and the crops' noise are fixed by
design), on the held-out comparison (``--heldout``: ``benchmarks/heldout.py``'s val/, whole 256x160
-> 1024x640 pairs of photos no candidate trained on) and on the sample's validation split
(``DATASET/val``), competition PSNR, fp32. Cost: parameters, MACs per input pixel (counted) and CPU
images/s at 256x160 in fp32 and bf16 (batch 1, all cores, after training: the best of ``--speed-rounds``
rounds, the models interleaved).
``--reference NAME=PATH`` adds a model trained elsewhere (the shipped one) to the scoring.

    .venv/bin/python -m benchmarks.capacity_ladder --minutes 60 --parallel 5 \
        --heldout build/heldout/competition --reference lowlight-compact=models/lowlight-compact.safetensors
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import DEFAULT_WEIGHTS_DIR, REPO, log
from benchmarks.heldout import val_pairs
from benchmarks.workload import conv_macs_per_pixel


@dataclass(frozen=True)
class Candidate:
    name: str
    description: str
    start: str  # "file:<name in ../shared/weights>" or "init:<architecture in workers/ops/architectures.py>"
    lr: float
    batch: int = 16
    crop: int = 48


CANDIDATES = {
    "compact-64x16": Candidate("compact-64x16", "SRVGG compact, 64 features, 16 convs (the shipped recipe)",
                               "file:realesr-animevideov3.pth", 4e-4),
    "compact-32x16": Candidate("compact-32x16", "SRVGG compact, 32 features, 16 convs", "init:compact-32x16", 1e-3),
    "compact-64x32": Candidate("compact-64x32", "SRVGG compact, 64 features, 32 convs", "init:compact-64x32", 6e-4),
    "compact-96x16": Candidate("compact-96x16", "SRVGG compact, 96 features, 16 convs", "init:compact-96x16", 4e-4),
    "rrdb-6": Candidate("rrdb-6", "RRDB, 6 blocks (Real-ESRGAN anime 6B)", "file:RealESRGAN_x4plus_anime_6B.pth", 2e-4),
    "span-48": Candidate("span-48", "SPAN, 48 features", "init:span-48", 1e-3),
    "unet-16": Candidate("unet-16", "NAFNet U-Net, width 16", "init:unet-16", 1e-3, crop=64),
    "unet-24": Candidate("unet-24", "NAFNet U-Net, width 24", "init:unet-24", 1e-3, crop=64),
    "unet-32": Candidate("unet-32", "NAFNet U-Net, width 32", "init:unet-32", 1e-3, crop=64),
}


def make_start(candidate: Candidate, folder: Path, weights_dir: Path = DEFAULT_WEIGHTS_DIR) -> Path:
    kind, _, what = candidate.start.partition(":")
    if kind == "file":
        return weights_dir / what
    from workers.ops.architectures import write_initial

    path = folder / f"{candidate.name}-init.safetensors"
    return path if path.exists() else write_initial(what, path, seed=0)


def train(candidate: Candidate, start: Path, corpus: Path, minutes: float, folder: Path, core: int | None,
          args: argparse.Namespace) -> subprocess.Popen[bytes]:
    out = folder / f"{candidate.name}.safetensors"
    pin = ["taskset", "-c", str(core)] if core is not None else []
    command = [*pin, str(harness.PRODUCER), "train", "--photos", str(corpus),
               "--from", str(start), "-o", str(out), "--minutes", str(minutes), "--batch", str(candidate.batch),
               "--crop", str(candidate.crop), "--lr", str(candidate.lr), "--holdout-crops", "64", "--eval-every",
               str(args.eval_every), "--seed", "0"] + (["--restart"] if args.restart else [])
    env = {**os.environ, "PRECISION": args.precision, "OMP_NUM_THREADS": "1"}
    where = f"on core {core}" if core is not None else "unpinned"
    log(f"{candidate.name}: training {where} for {minutes} min")
    return subprocess.Popen(command, env=env, stdout=(folder / f"{candidate.name}.log").open("ab"),
                            stderr=subprocess.STDOUT)


def score(name: str, description: str, checkpoint: Path, args: argparse.Namespace) -> dict[str, object]:
    import torch

    from workers.ops.agreement import mean_psnr
    from workers.ops.upscale import load_upscaler

    provenance = json.loads(checkpoint.with_suffix(".json").read_text())
    upscaler = load_upscaler(checkpoint, "cpu", "fp32")
    sample = mean_psnr(upscaler, [(inp, gt) for _, inp, gt in val_pairs(args.dataset)])
    heldout = mean_psnr(upscaler, [(inp, gt) for _, inp, gt in val_pairs(args.heldout)]) if args.heldout else None
    curve = provenance["curve"]
    pixels = provenance["steps"] * provenance["config"]["batch"] * provenance["config"]["crop"] ** 2
    return {"candidate": name, "description": description, "start": provenance["start"]["source"],
            "params": sum(p.numel() for p in upscaler.descriptor.model.parameters()),
            "macs_per_input_pixel": round(conv_macs_per_pixel(upscaler.descriptor.model, torch.device("cpu"),
                                                              torch.float32, size=64)),
            "minutes": round(provenance["seconds"] / 60, 1), "steps": provenance["steps"],
            "input_megapixels_seen": round(pixels / 1e6, 1),
            "start_holdout_psnr": curve[0]["holdout_psnr"], "holdout_psnr": provenance["holdout_psnr"],
            "heldout_psnr": None if heldout is None else round(heldout, 3), "sample_val_psnr": round(sample, 3),
            "curve": [(c["seconds"], c["holdout_psnr"]) for c in curve]}


def speeds(checkpoints: list[Path], rounds: int) -> list[dict[str, float]]:
    """Images/s at 256x160 of each model in fp32 and bf16 (batch 1, all cores): each its best of ``rounds``
    interleaved rounds (ABBA), so a shared machine's bursts weigh on all alike."""
    import numpy as np

    from workers.ops.upscale import load_upscaler

    image = np.random.default_rng(0).integers(0, 80, (1, 160, 256, 3), dtype=np.uint8)
    loaded = [{p: load_upscaler(c, "cpu", p) for p in ("fp32", "bf16")} for c in checkpoints]
    for pair in loaded:
        for upscaler in pair.values():
            upscaler.upscale(image)  # warm-up
    best: list[dict[str, float]] = [{"fp32": 0.0, "bf16": 0.0} for _ in checkpoints]
    for _, i in harness.interleaved(range(len(checkpoints)), rounds, lambda i: checkpoints[i].name):
        for precision, upscaler in loaded[i].items():
            started = time.perf_counter()
            for _ in range(3):
                upscaler.upscale(image)
            best[i][precision] = max(best[i][precision], round(3 / (time.perf_counter() - started), 2))
    return best


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__file__, __doc__)
    parser.add_argument("--corpus", type=Path, default=Path.home() / ".cache" / "lowlight-sr" / "photo-corpus")
    parser.add_argument("--minutes", type=float, default=25.0, help="wall time of each candidate")
    parser.add_argument("--candidates", default="compact-64x16,compact-64x32,unet-16,unet-24,unet-32")
    parser.add_argument("--parallel", type=int, default=5, help="candidates at once, pinned round-robin to the cores (more than cores: they share them, each as much as every other, all in the same window)")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "ladder")
    parser.add_argument("--dataset", type=Path, default=REPO / "dataset")
    parser.add_argument("--heldout", type=Path, default=None, help="a benchmarks/heldout.py dataset: its val/ is scored")
    parser.add_argument("--reference", action="append", default=[], metavar="NAME=PATH",
                        help="score a model trained elsewhere too (its provenance beside it)")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--weights-dir", type=Path, default=DEFAULT_WEIGHTS_DIR, help="the public checkpoints")
    parser.add_argument("--precision", default="auto", help="PRECISION of the trainings (auto: bf16 where native)")
    parser.add_argument("--restart", action="store_true", help="ignore saved states (default: an interrupted ladder resumes)")
    parser.add_argument("--score-only", action="store_true", help="score what an earlier run left in --out")
    parser.add_argument("--speed-rounds", type=int, default=5, help="interleaved rounds of the speed measurement")
    args = parser.parse_args(argv)
    bench = harness.start("cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    chosen = [CANDIDATES[name] for name in args.candidates.split(",")]
    if not args.score_only:
        pending = list(chosen)
        while pending:
            batch, pending = pending[: args.parallel], pending[args.parallel :]
            cores = sorted(os.sched_getaffinity(0))
            # Pinned round-robin where the candidates divide the cores evenly (two per core: each gets half a
            # core); otherwise one thread each, unpinned, and the scheduler shares the cores among them equally.
            even = len(batch) % len(cores) == 0
            running = [train(c, make_start(c, args.out, args.weights_dir), args.corpus, args.minutes, args.out,
                             cores[i % len(cores)] if even else None, args) for i, c in enumerate(batch)]
            for process in running:
                process.wait()
    checkpoints = [args.out / f"{c.name}.safetensors" for c in chosen]
    rows = [score(c.name, c.description, path, args) for c, path in zip(chosen, checkpoints, strict=True)]
    for reference in args.reference:
        name, _, path = reference.partition("=")
        rows.append(score(name, f"{name} (trained elsewhere: reference)", Path(path), args))
        checkpoints.append(Path(path))
    log(f"speeds: {args.speed_rounds} interleaved rounds")
    for row, speed in zip(rows, speeds(checkpoints, args.speed_rounds), strict=True):
        row["cpu_images_per_s"] = speed
    (args.out / "ladder.json").write_text(json.dumps(rows, indent=1))
    print(f"Capacity ladder: {args.minutes:g} min of training each, {args.parallel} at once on one core each "
          f"(PRECISION={args.precision}), the photo corpus, the competition's forward model\n")
    print("| model | start | params | MACs / input px | minutes | steps | input MP seen | held-back crops PSNR (start -> end) "
          "| held-out PSNR | sample val PSNR | CPU img/s 256x160 fp32 | bf16 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        heldout = "-" if r["heldout_psnr"] is None else f"{r['heldout_psnr']:.3f}"
        print(f"| {r['description']} | {r['start']} | {r['params'] / 1e6:.2f} M | {r['macs_per_input_pixel']:,} | "
              f"{r['minutes']} | {r['steps']} | {r['input_megapixels_seen']} | {r['start_holdout_psnr']:.2f} -> "
              f"{r['holdout_psnr']:.2f} | {heldout} | {r['sample_val_psnr']:.3f} | {r['cpu_images_per_s']['fp32']} | "
              f"{r['cpu_images_per_s']['bf16']} |")
    print()
    print(bench.machine_table("see the table", "48x48 / 64x64 training crops; 256x160 speed"))
    log(f"done at {time.strftime('%H:%M:%S')}; curves in {args.out / 'ladder.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
