"""Competition PSNR and SSIM of pipeline variants on a validation split (``val/val`` vs ``val/gt``).

Each variant is one ``(label, function)`` pair, the function mapping a low-resolution RGB uint8
image to its 4x output; :func:`build_variants` lists them, so a new stage or preset (a tone
curve, the ``seed``/``quality``/``perceptual`` presets) is one more entry. Scoring is
``producer.evaluate``'s: PSNR on the submission vectors (every 8th value of the greyscale 4x
image), SSIM on the full greyscale images, averaged over images. No runs are created: the stage
functions (``workers.ops.denoise``, ``workers.ops.upscale``) are called directly.

Variants: bicubic x4; NL-means (the seed's h=7, and h=10) + bicubic; the seed pipeline
(``--seed-compat``: BGR feed and Lanczos resize to a multiple of 8); the default pipeline (RGB
feed); no denoising + the model; NL-means + each other x4 checkpoint found in ``--weights-dir``;
and ``learned`` with and without ``--tta``: a model fine-tuned on the dataset's training pairs for
``--train-minutes`` (in a scratch copy of ``train/``, never in the dataset), with its training time.

    python -m benchmarks.quality --dataset dataset --weights-dir ../shared/weights --train-minutes 3
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import harness, workload
from benchmarks.harness import log

Image = Any  # numpy uint8 array, H x W x 3 RGB
Variant = tuple[str, Callable[[Image], Image]]
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = harness.parser(__file__, __doc__)
    harness.add_common_arguments(parser, size=False, count=None)
    parser.add_argument("--dataset", type=Path, default=harness.REPO / "dataset",
                        help="dataset root holding val/val and val/gt [default: %(default)s]")
    parser.add_argument("--weights-dir", type=Path, default=harness.DEFAULT_WEIGHTS_DIR,
                        help="every other checkpoint here is scored as NL-means + that model [default: %(default)s]")
    parser.add_argument("--limit", type=int, default=0, help="score only the first N images [default: all]")
    parser.add_argument("--train-minutes", type=float, default=3.0,
                        help="fine-tune for the learned variants this long on DATASET/train (0: skip them) [default: 3]")
    parser.add_argument("--train-from", default=None,
                        help="start checkpoint of the learned variants [default: producer train's, the compact SRVGG]")
    args = parser.parse_args(argv)
    if args.quick:
        args.limit = args.limit or 1
        args.train_minutes = min(args.train_minutes, 0.05)
    return args


class Models:
    """Upscalers loaded on first use and kept, one per checkpoint path."""

    def __init__(self, device: str) -> None:
        self.device = device
        self._loaded: dict[Path, Any] = {}

    def get(self, path: Path) -> Any:
        from workers.ops.upscale import load_upscaler

        path = path.resolve()
        if path not in self._loaded:
            self._loaded[path] = load_upscaler(path, self.device)
        return self._loaded[path]


def sr_pipeline(models: Models, weights: Path, denoise_method: str = "nlm", channel_order: str = "rgb",
                resize_multiple: int = 0) -> Callable[[Image], Image]:
    """The production stages in order: denoise, upscale (one image), optional seed resize."""
    import numpy as np

    from workers.ops.denoise import DenoiseSpec, denoise
    from workers.ops.resample import resize_to_multiple

    spec = DenoiseSpec(method=denoise_method)

    def run(rgb: Image) -> Image:
        hr = models.get(weights).upscale(np.stack([denoise(rgb, spec)]), channel_order)[0]
        return resize_to_multiple(hr, resize_multiple) if resize_multiple else hr

    return run


def other_checkpoints(folder: Path, default: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.suffix in CHECKPOINT_SUFFIXES and p.is_file() and p.resolve() != default.resolve())


def build_variants(args: argparse.Namespace, models: Models) -> tuple[list[Variant], list[str]]:
    """The variants to score, and a note on each checkpoint left out (and why)."""
    from producer.evaluate import bicubic_x4
    from workers.errors import UnsupportedModelError
    from workers.ops.denoise import DenoiseSpec, denoise

    nlm = DenoiseSpec()
    name = args.weights.name
    models.get(args.weights)  # fail before scoring anything if the main model cannot be loaded
    strong = DenoiseSpec(h=10, h_color=10)
    variants: list[Variant] = [
        ("bicubic x4", bicubic_x4),
        ("NL-means + bicubic x4", lambda rgb: bicubic_x4(denoise(rgb, nlm))),
        ("NL-means h=10 + bicubic x4", lambda rgb: bicubic_x4(denoise(rgb, strong))),
        (f"seed pipeline: NL-means + {name}, BGR feed + resize (--seed-compat)",
         sr_pipeline(models, args.weights, channel_order="bgr", resize_multiple=8)),
        (f"default pipeline: NL-means + {name}, RGB", sr_pipeline(models, args.weights)),
        (f"no denoise + {name}, RGB", sr_pipeline(models, args.weights, denoise_method="none")),
    ]
    notes = []
    for path in other_checkpoints(args.weights_dir, args.weights):
        try:
            models.get(path)  # load up front: an unusable file is a note, not a crash halfway through scoring
        except UnsupportedModelError as exc:
            notes.append(f"left out {path.name}: {exc}")
            continue
        variants.append((f"NL-means + {path.name}, RGB", sr_pipeline(models, path)))
    if args.train_minutes > 0 and (args.dataset / "train").is_dir():
        checkpoint, summary = train_learned(args)
        notes.append(summary)
        for tta in (False, True):
            label = "learned (fine-tuned, no NL-means)" + (" + tta x8" if tta else "")
            variants.append((label, learned_pipeline(models, checkpoint, tta)))
    return variants, notes


def train_learned(args: argparse.Namespace) -> tuple[Path, str]:
    """Fine-tune as `producer train DATASET --minutes M` does, on a scratch copy of the training split."""
    import shutil
    import tempfile

    from workers.io.storage import StorageFactory
    from workers.settings import Settings
    from workers.training.config import TrainConfig
    from workers.training.job import run_training

    scratch = Path(tempfile.mkdtemp(prefix="quality-train-"))
    shutil.copytree(args.dataset / "train", scratch / "train")
    if (args.dataset / "calibration.json").is_file():
        shutil.copy(args.dataset / "calibration.json", scratch)
    settings = Settings.from_env(device=args.device, weights_dir=str(args.weights_dir))
    log(f"fine-tuning for {args.train_minutes:g} min on {args.dataset / 'train'}")
    result = run_training(str(scratch), None, args.train_from, TrainConfig(minutes=args.train_minutes, steps=100_000),
                          settings, StorageFactory(settings), note=log)
    best = f"{result.best_psnr:.2f} dB" if result.best_psnr is not None else "n/a"
    summary = (f"learned: {result.steps} steps in {result.seconds:.0f} s ({result.steps / max(result.seconds, 1e-9):.2f} "
               f"steps/s), best held-back PSNR {best} at step {result.best_step}")
    return scratch / "trained_x4.safetensors", summary


def learned_pipeline(models: Models, checkpoint: Path, tta: bool) -> Callable[[Image], Image]:
    import numpy as np

    def run(rgb: Image) -> Image:
        return models.get(checkpoint).upscale(np.stack([rgb]), tta=tta)[0]

    return run


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from producer.evaluate import VAL_INPUTS, VAL_TRUTH, format_table, score_function, truth_pairs

    bench = harness.start(args.device, args.torch_threads)
    pairs = truth_pairs(args.dataset / VAL_INPUTS, args.dataset / VAL_TRUTH)
    if args.limit:
        pairs = pairs[: args.limit]
    models = Models(args.device)
    variants, notes = build_variants(args, models)

    scores, seconds = [], []
    for label, make in variants:
        log(f"scoring {label} on {len(pairs)} images")
        start = time.perf_counter()
        scores.append(score_function(label, pairs, make))
        seconds.append(time.perf_counter() - start)

    from producer.evaluate import load_rgb

    lr = load_rgb(pairs[0][0])
    size = f"{lr.shape[1]}x{lr.shape[0]} -> {4 * lr.shape[1]}x{4 * lr.shape[0]} ({len(pairs)} images from {args.dataset})"
    print(f"## Quality on {args.dataset / VAL_INPUTS}\n")
    print(format_table(scores))
    print()
    print(harness.markdown_table(("method", "seconds (all images; models loaded beforehand)"),
                                [(s.method, f"{t:.2f}") for s, t in zip(scores, seconds, strict=True)]))
    for note in notes:
        print(f"\n- {note}")
    print()
    default = models.get(args.weights)
    model_label = workload.describe_model(args.weights, default.descriptor, default.dtype)
    print(bench.machine_table(model_label, size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
