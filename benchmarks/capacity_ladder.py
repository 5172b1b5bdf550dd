"""What capacity buys once data is not the limit: architectures pretrained on the photo corpus for
equal wall time, then scored the same way.

Each candidate runs `producer train --photos CORPUS` for ``--minutes`` under the competition's
forward model, pinned to one core of its own (``taskset``), ``--parallel`` at a time, so every
candidate gets the same CPU for the same time. A candidate starts from the public checkpoint of its
architecture where one exists (``../shared/weights``), else from a random initialisation. All are
scored on the same held-back photo crops (the corpus split and the crops' noise are fixed by
design), and on the sample's validation split (``DATASET/val``, competition PSNR). Cost: MACs per
input pixel (counted) and CPU images/s at 256x160 (fp32, all cores, measured after training,
one candidate at a time).

    .venv/bin/python benchmarks/capacity_ladder.py --corpus ~/.cache/lowlight-sr/photo-corpus --minutes 25
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import DEFAULT_WEIGHTS_DIR, REPO, conv_macs_per_pixel, log, machine_table


@dataclass(frozen=True)
class Candidate:
    name: str
    description: str
    start: str  # "file:<name in ../shared/weights>" or "random:<arch>"
    lr: float


CANDIDATES = {
    "compact-64x16": Candidate("compact-64x16", "SRVGG compact, 64 features, 16 convs (the shipped recipe)",
                               "file:realesr-animevideov3.pth", 4e-4),
    "compact-32x16": Candidate("compact-32x16", "SRVGG compact, 32 features, 16 convs", "random:compact-32x16", 1e-3),
    "compact-64x32": Candidate("compact-64x32", "SRVGG compact, 64 features, 32 convs", "random:compact-64x32", 6e-4),
    "rrdb-6": Candidate("rrdb-6", "RRDB, 6 blocks (Real-ESRGAN anime 6B)", "file:RealESRGAN_x4plus_anime_6B.pth", 2e-4),
    "span-48": Candidate("span-48", "SPAN, 48 features", "random:span-48", 1e-3),
}


def make_start(candidate: Candidate, folder: Path) -> Path:
    kind, _, what = candidate.start.partition(":")
    if kind == "file":
        return DEFAULT_WEIGHTS_DIR / what
    import torch

    torch.manual_seed(0)
    if what.startswith("compact"):
        from spandrel.architectures.Compact import Compact

        feat, convs = (int(v) for v in what.removeprefix("compact-").split("x"))
        model = Compact(num_in_ch=3, num_out_ch=3, num_feat=feat, num_conv=convs, upscale=4)
    else:
        from spandrel.architectures.SPAN import SPAN

        model = SPAN(num_in_ch=3, num_out_ch=3, feature_channels=int(what.removeprefix("span-")), upscale=4)
    path = folder / f"{candidate.name}-init.pth"
    torch.save({"params": model.state_dict()}, path)
    return path


def train(candidate: Candidate, start: Path, corpus: Path, minutes: float, folder: Path, core: int,
          args: argparse.Namespace) -> subprocess.Popen[bytes]:
    out = folder / f"{candidate.name}.safetensors"
    command = ["taskset", "-c", str(core), str(REPO / ".venv" / "bin" / "producer"), "train", "--photos", str(corpus),
               "--from", str(start), "-o", str(out), "--minutes", str(minutes), "--batch", str(args.batch),
               "--crop", str(args.crop), "--lr", str(candidate.lr), "--holdout-crops", "64", "--eval-every",
               str(args.eval_every), "--seed", "0", "--restart"]
    env = {**os.environ, "PRECISION": args.precision, "OMP_NUM_THREADS": "1"}
    log(f"{candidate.name}: training on core {core} for {minutes} min")
    return subprocess.Popen(command, env=env, stdout=(folder / f"{candidate.name}.log").open("wb"),
                            stderr=subprocess.STDOUT)


def score(candidate: Candidate, folder: Path, dataset: Path) -> dict[str, object]:
    from importlib.machinery import SourceFileLoader

    import torch

    register = SourceFileLoader("register_model", str(REPO / "scripts" / "register-model")).load_module()
    from workers.io.submission import grey_subsample
    from workers.ops.metrics import psnr
    from workers.ops.upscale import load_upscaler

    checkpoint = folder / f"{candidate.name}.safetensors"
    provenance = json.loads(checkpoint.with_suffix(".json").read_text())
    pairs = register.val_pairs(dataset)
    upscaler = load_upscaler(checkpoint, "cpu", "fp32")
    val = float(np.mean([psnr(grey_subsample(upscaler.upscale(inp[None])[0]), grey_subsample(gt)) for inp, gt in pairs]))
    curve = provenance["curve"]
    pixels = provenance["steps"] * provenance["config"]["batch"] * provenance["config"]["crop"] ** 2
    return {"candidate": candidate.name, "description": candidate.description, "start": candidate.start,
            "macs_per_input_pixel": round(conv_macs_per_pixel(upscaler.descriptor.model, torch.device("cpu"),
                                                              torch.float32, size=64)),
            "steps": provenance["steps"], "input_megapixels_seen": round(pixels / 1e6, 1),
            "start_holdout_psnr": curve[0]["holdout_psnr"], "holdout_psnr": provenance["holdout_psnr"],
            "sample_val_psnr": round(val, 3), "cpu_images_per_s": register.measure_speed(checkpoint)["cpu_images_per_s_256x160"],
            "curve": [(c["seconds"], c["holdout_psnr"]) for c in curve]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=Path.home() / ".cache" / "lowlight-sr" / "photo-corpus")
    parser.add_argument("--minutes", type=float, default=25.0, help="wall time of each candidate")
    parser.add_argument("--candidates", default="compact-64x16,rrdb-6,span-48,compact-32x16")
    parser.add_argument("--parallel", type=int, default=2, help="candidates at once, pinned round-robin to the cores (4 on 2 cores: two per core, all in the same window)")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "ladder")
    parser.add_argument("--dataset", type=Path, default=REPO / "dataset")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--crop", type=int, default=48)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--score-only", action="store_true", help="score what an earlier run left in --out")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    chosen = [CANDIDATES[name] for name in args.candidates.split(",")]
    if not args.score_only:
        pending = list(chosen)
        while pending:
            batch, pending = pending[: args.parallel], pending[args.parallel :]
            cores = sorted(os.sched_getaffinity(0))
            # more candidates than cores share them in pairs: each still gets what every other gets
            running = [train(c, make_start(c, args.out), args.corpus, args.minutes, args.out, cores[i % len(cores)], args)
                       for i, c in enumerate(batch)]
            for process in running:
                process.wait()
    rows = [score(c, args.out, args.dataset) for c in chosen]
    (args.out / "ladder.json").write_text(json.dumps(rows, indent=1))
    print(f"Capacity ladder: {args.minutes:g} min of training each on one core ({args.precision} autocast), "
          f"batch {args.batch} of {args.crop}x{args.crop} input crops, the photo corpus, the competition's forward model\n")
    print("| model | start | MACs / input px | steps | input MP seen | held-back PSNR (start -> end) | sample val PSNR "
          "| CPU img/s 256x160 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['description']} | {r['start']} | {r['macs_per_input_pixel']:,} | {r['steps']} | "
              f"{r['input_megapixels_seen']} | {r['start_holdout_psnr']:.2f} -> {r['holdout_psnr']:.2f} | "
              f"{r['sample_val_psnr']:.2f} | {r['cpu_images_per_s']} |")
    print()
    import torch

    print(machine_table(torch.device("cpu"), "see the table", f"{args.crop}x{args.crop} training crops; 256x160 speed"))
    log(f"done at {time.strftime('%H:%M:%S')}; curves in {args.out / 'ladder.json'}")


if __name__ == "__main__":
    main()
