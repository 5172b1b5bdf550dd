"""Training speed: steps/s and input pixels/s of ``producer train``'s loop on this device.

The real loop (:class:`workers.training.finetune.Trainer`: batches of fresh degradations, the loss,
Adam, the EMA) on the sample dataset's training pairs, from the shipped model, for each precision.
Timed between the progress reports of step ``--warm-up`` and of the step before the last, so start-up,
the start checkpoint's scoring and the final evaluation are left out.

    python -m benchmarks.training_speed --steps 60 --device cuda
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import fmt, log


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = harness.parser(__file__, __doc__)
    harness.add_common_arguments(parser, size=False, count=None)
    parser.set_defaults(weights=harness.SHIPPED_MODEL)
    parser.add_argument("--dataset", type=Path, default=harness.REPO / "dataset", help="a dataset with train/ pairs")
    parser.add_argument("--steps", type=int, default=40, help="steps per precision [default: 40]")
    parser.add_argument("--warm-up", type=int, default=5, help="steps left out of the timing [default: 5]")
    parser.add_argument("--batch", type=int, default=16, help="crops per step [default: 16]")
    parser.add_argument("--crop", type=int, default=32, help="input crop side [default: 32]")
    parser.add_argument("--precisions", default="auto,fp32", help="comma-separated [default: auto,fp32]")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warm_up, args.batch, args.crop, args.precisions = 4, 1, 2, 16, "auto"
    if args.steps < args.warm_up + 2:
        parser.error("--steps must exceed --warm-up by at least 2")
    return args


def steps_per_second(args: argparse.Namespace, precision: str, tmp: Path) -> tuple[float, str]:
    """(steps/s, the precision the trainer chose) over the timed steps."""
    from workers.io.storage import StorageFactory
    from workers.settings import Settings
    from workers.training.config import TrainConfig
    from workers.training.setup import make_trainer

    settings = Settings(device=args.device, precision=precision, weights_dir="/nonexistent")
    config = TrainConfig(steps=args.steps, batch=args.batch, crop=args.crop, eval_every=10**9, holdout=0.1)
    trainer = make_trainer(str(args.dataset), str(tmp / f"{precision}.safetensors"), str(args.weights), config,
                           settings, StorageFactory(settings), restart=True)
    seen: dict[int, float] = {}
    trainer.run(on_progress=lambda progress: seen.setdefault(progress.step, progress.seconds))
    first, last = args.warm_up, args.steps - 1
    chosen = str(trainer.amp or "torch.float32").removeprefix("torch.")
    return (last - first) / (seen[last] - seen[first]), chosen


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = harness.start(args.device, args.torch_threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="training-speed-") as tmp:
        for precision in [p.strip() for p in args.precisions.split(",") if p.strip()]:
            log(f"training, precision {precision}: {args.steps} steps")
            rate, chosen = steps_per_second(args, precision, Path(tmp))
            pixels = rate * args.batch * args.crop**2
            rows.append((precision, chosen, fmt(rate), fmt(pixels / 1e3)))
            harness.record(args, f"training steps/s, {chosen}", rate, "steps/s",
                          f"batch {args.batch} of {args.crop}x{args.crop} input crops: {fmt(pixels / 1e3)} K input px/s")
    print(f"## Training speed: {args.weights.name}, batch {args.batch} of {args.crop}x{args.crop} input crops, "
          f"steps {args.warm_up}-{args.steps - 1} timed\n")
    print(harness.markdown_table(("PRECISION", "runs as", "steps/s", "K input pixels/s"), rows))
    print()
    print(bench.machine_table(args.weights.name, f"{args.crop}x{args.crop} crops"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
