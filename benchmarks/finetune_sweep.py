"""A fine-tune's learning rate and length, measured: `producer train DATASET` at several learning rates at
once (the same minutes, sharing the cores alike), each scored against its start on the dataset's val/
split (pictures the fine-tune never saw) and on the sample's.

DATASET is a ``benchmarks/heldout.py`` dataset (26 pairs of 7 scenes; ``--val-from training``: val/ holds
other pictures, none of them among the photos a fine-tune holds back). It is calibrated first
(``producer calibrate``); the photo corpus is mixed in as ``producer train`` does by default. Each run
starts from the shipped default model (or ``--from``) and writes ``OUT/lr-<lr>.safetensors``.

    .venv/bin/python -m benchmarks.finetune_sweep build/heldout/user --lrs 5e-5,1e-4,2e-4,4e-4 --minutes 10
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import REPO, log, markdown_table
from benchmarks.heldout import val_pairs


def producer(*args: str, env: dict[str, str], log_to: Path | None = None) -> subprocess.Popen[bytes]:
    out = log_to.open("wb") if log_to else subprocess.DEVNULL
    return subprocess.Popen([str(harness.PRODUCER), *args], env=env, stdout=out, stderr=subprocess.STDOUT)


def score(checkpoint: Path, dataset: Path) -> float:
    from workers.ops.agreement import mean_psnr
    from workers.ops.upscale import load_upscaler

    return mean_psnr(load_upscaler(checkpoint, "cpu", "fp32"), [(inp, gt) for _, inp, gt in val_pairs(dataset)])


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__file__, __doc__)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--lrs", default="5e-5,1e-4,2e-4,4e-4")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--from", dest="start", default=None, help="start checkpoint (default: the shipped model)")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "sweep")
    parser.add_argument("--sample", type=Path, default=REPO / "dataset")
    parser.add_argument("--threads", type=int, default=1, help="threads per run (OMP_NUM_THREADS)")
    args = parser.parse_args(argv)
    from workers.io.models import load_registry, models_folder

    registry = load_registry(models_folder())
    start = Path(args.start) if args.start else registry.path(registry.default)
    args.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    if not (args.dataset / "calibration.json").exists():
        log(f"calibrating {args.dataset}")
        producer("calibrate", str(args.dataset), env=env).wait()
    lrs = [lr.strip() for lr in args.lrs.split(",") if lr.strip()]
    running = []
    for lr in lrs:
        output = args.out / f"lr-{lr}.safetensors"
        for stale in (output, output.with_suffix(".json"), Path(f"{output}.state")):
            stale.unlink(missing_ok=True)
        log(f"lr {lr}: {args.minutes} min")
        running.append(
            producer(
                "train",
                str(args.dataset),
                "--from",
                str(start),
                "-o",
                str(output),
                "--lr",
                lr,
                "--minutes",
                str(args.minutes),
                env=env,
                log_to=args.out / f"lr-{lr}.log",
            )
        )
    for process in running:
        process.wait()
    baseline_val, baseline_sample = score(start, args.dataset), score(start, args.sample)
    rows, found = [], []
    for lr in lrs:
        output = args.out / f"lr-{lr}.safetensors"
        provenance = json.loads(output.with_suffix(".json").read_text())
        selection = provenance["selection"]
        val, sample = score(output, args.dataset), score(output, args.sample)
        s, b = selection["start"], selection["best"]
        found.append(
            {
                "lr": lr,
                "steps": provenance["steps"],
                "best_step": provenance["best_step"],
                "kept": selection["best_is"],
                "selection": selection,
                "val": val,
                "sample": sample,
                "curve": provenance["curve"],
            }
        )
        rows.append(
            (
                lr,
                provenance["steps"],
                provenance["best_step"],
                selection["best_is"],
                f"{s['pairs']:.3f} -> {b['pairs']:.3f}" if s.get("pairs") is not None else "-",
                f"{s['photos']:.3f} -> {b['photos']:.3f}" if s.get("photos") is not None else "-",
                f"{baseline_val:.3f} -> {val:.3f} ({val - baseline_val:+.3f})",
                f"{baseline_sample:.3f} -> {sample:.3f} ({sample - baseline_sample:+.3f})",
            )
        )
    (args.out / "sweep.json").write_text(json.dumps(found, indent=1))
    print(f"## Fine-tune sweep on {args.dataset}: {args.minutes:g} min each, {len(lrs)} at once, from {start.name}\n")
    print(
        markdown_table(
            (
                "lr",
                "steps",
                "best step",
                "output is",
                "held-back pairs (start -> best)",
                "held-back photos (start -> best)",
                "val PSNR (start -> output)",
                "sample val PSNR",
            ),
            rows,
        )
    )
    print(f"\nLoad average at the end: {os.getloadavg()[0]:.1f}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
