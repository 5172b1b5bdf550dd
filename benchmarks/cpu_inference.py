"""CPU inference of the default (learned, compact) model: what each setting buys, in one run.

The same images go through the model at batch 1 (what the embedded pipeline runs on a CPU) with:
NCHW and ``channels_last`` memory, ``torch.no_grad`` and ``torch.inference_mode``, 1 thread and one
per core, ``torch.compile``, and bf16 autocast. Each row's images/s is compared with the previous
production setting (NCHW, inference mode, torch's default threads), and its output with fp32 NCHW:
a setting is worth adopting when it is at least 1.3x faster with the same pixels (up to a rare
one-level flip of a rounding: fp32 summed in another order). The last row is
the production upscaler itself (``Upscaler.upscale``: conversion, rounding and copies included).

    python benchmarks/cpu_inference.py --size 256x160 --count 8
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:  # run as `python benchmarks/x.py`: make benchmarks/, workers/, producer/ importable
    sys.path.insert(0, ROOT)
from benchmarks import common  # noqa: E402
from benchmarks.common import fmt, log  # noqa: E402

SHIPPED_MODEL = common.REPO / "models" / "lowlight-compact.safetensors"
ADOPT_AT = 1.3  # speed-up a setting must give, with the same output, to be adopted
SAME_OUTPUT_LEVELS = 1  # fp32 in another summation order (channels_last) may flip a rare rounding by one level


@dataclass(frozen=True)
class Setting:
    label: str
    channels_last: bool = False
    grad_mode: str = "inference_mode"  # or no_grad
    threads: int = 0  # 0: torch's default (one per core)
    compile: bool = False
    bf16: bool = False


@dataclass
class Row:
    setting: Setting
    seconds_per_image: float
    first_call_s: float
    max_difference: int
    psnr_db: float


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cpu_inference.py", description=__doc__.split("\n\n")[0])
    common.add_common_arguments(parser, count=8)
    parser.set_defaults(weights=SHIPPED_MODEL)
    parser.add_argument("--no-compile", action="store_true", help="leave out torch.compile (it compiles for a minute)")
    return common.parse_common(parser, argv)


def settings(cores: int, with_compile: bool) -> list[Setting]:
    rows = [
        Setting("before: NCHW, inference_mode, default threads"),
        Setting("NCHW, no_grad", grad_mode="no_grad"),
        Setting("channels_last (production)", channels_last=True),
        Setting("channels_last, 1 thread", channels_last=True, threads=1),
    ]
    if cores > 2:
        rows.append(Setting(f"channels_last, {cores // 2} threads", channels_last=True, threads=cores // 2))
    if with_compile:
        rows.append(Setting("channels_last + torch.compile", channels_last=True, compile=True))
    rows.append(Setting("channels_last + bf16 autocast", channels_last=True, bf16=True))
    return rows


def grad_context(mode: str) -> Any:
    import torch

    return torch.inference_mode() if mode == "inference_mode" else torch.no_grad()


def run_setting(setting: Setting, model: Any, batches: list[Any], default_threads: int) -> tuple[list[Any], float, float]:
    """(uint8 outputs, seconds per image, first call seconds) of ``model`` under ``setting``."""
    import torch

    torch.set_num_threads(setting.threads or default_threads)
    fmt_ = torch.channels_last if setting.channels_last else torch.contiguous_format
    model.to(memory_format=fmt_)
    forward: Callable[[Any], Any] = torch.compile(model) if setting.compile else model

    def once(x: Any) -> Any:
        with grad_context(setting.grad_mode), torch.autocast("cpu", torch.bfloat16, enabled=setting.bf16):
            y = forward(x.contiguous(memory_format=fmt_))
        return y.float().clamp(0, 1).mul(255).round().to(torch.uint8)

    _, first = common.timed(lambda: once(batches[0]))
    started = time.perf_counter()
    outputs = [once(x) for x in batches]
    seconds = (time.perf_counter() - started) / len(batches)
    torch.set_num_threads(default_threads)
    model.to(memory_format=torch.contiguous_format)
    return outputs, seconds, first


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import numpy as np
    import torch

    from workers.ops.metrics import psnr
    from workers.ops.upscale import load_descriptor, load_upscaler

    common.apply_torch_threads(args.torch_threads)
    default_threads = torch.get_num_threads()
    width, height = args.size
    images = common.synthetic_images(args.count, width, height)
    batches = [torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255) for image in images]
    model = load_descriptor(args.weights).model.eval()
    load_avg_start = common.load_average()

    rows: list[Row] = []
    reference: list[Any] = []
    run_setting(Setting("warm-up"), model, batches[:1], default_threads)  # the first row must not pay start-up
    for setting in settings(common.core_count(), not args.no_compile):
        log(f"{setting.label}: {len(batches)} images")
        outputs, seconds, first = run_setting(setting, model, batches, default_threads)
        reference = reference or outputs
        diffs = [int((a.int() - b.int()).abs().max()) for a, b in zip(outputs, reference, strict=True)]
        worst = min(psnr(a.numpy(), b.numpy()) for a, b in zip(outputs, reference, strict=True))
        rows.append(Row(setting, seconds, first, max(diffs), worst))
        if setting.label.endswith("(production)"):
            production_reference = outputs

    log("production upscaler (Upscaler.upscale)")
    upscaler = load_upscaler(args.weights, "cpu")
    production = common.measure_upscale(upscaler, images, 1)
    produced = [upscaler.upscale(image[None])[0] for image in images[:2]]
    same = all(np.array_equal(p, r[0].permute(1, 2, 0).numpy())
               for p, r in zip(produced, production_reference, strict=False))

    before = rows[0].seconds_per_image
    layout = next(row for row in rows if row.setting.label.endswith("(production)"))
    table = []
    for row in rows:
        # A setting on top of channels_last (threads, compile, bf16) is judged by what it adds to it.
        base = layout if row.setting.channels_last and row is not layout else rows[0]
        ratio, own = before / row.seconds_per_image, base.seconds_per_image / row.seconds_per_image
        same_output = row.max_difference <= SAME_OUTPUT_LEVELS
        verdict = ("baseline" if row is rows[0] else
                   "adopted" if own >= ADOPT_AT and same_output else
                   f"no: < {ADOPT_AT}x" if same_output else "no: changes the output")
        output = "identical" if row.max_difference == 0 else f"max {row.max_difference}, {row.psnr_db:.1f} dB"
        table.append((row.setting.label, fmt(1000 * row.seconds_per_image), fmt(1 / row.seconds_per_image),
                      f"{ratio:.2f}x", f"{own:.2f}x" if row is not rows[0] else "-", output,
                      f"{row.first_call_s:.2f}", verdict))
        common.record(args, row.setting.label, ratio, "x vs before",
                      f"{fmt(1 / row.seconds_per_image)} images/s; {own:.2f}x its own gain; output {output}; {verdict}")
    table.append(("production: Upscaler.upscale (channels_last, inference_mode, uint8 in and out)",
                  fmt(production.ms_per_image), fmt(production.images_per_second),
                  f"{before * production.images_per_second:.2f}x", "-",
                  "as the channels_last row" if same else "DIFFERS from the channels_last row", "-", "-"))
    common.record(args, "production upscaler", before * production.images_per_second, "x vs before",
                  f"{fmt(production.images_per_second)} images/s")

    print(f"## CPU inference of {args.weights.name}: {args.count} images {width}x{height} -> "
          f"{4 * width}x{4 * height}, batch 1\n")
    print(common.markdown_table(("setting", "ms/image", "images/s", "vs before", "its own gain",
                                 "output vs fp32 NCHW", "first call s", "verdict"), table))
    print(f"\nIts own gain: against the row it builds on (before, or channels_last for the settings added to "
          f"it). Adopted: what is at least {ADOPT_AT}x faster on its own with the same output (at most {SAME_OUTPUT_LEVELS} level "
          "apart: fp32 summed in another order can flip a rounding). Threads: a setting of the machine, not of "
          "the code (torch's default is one per core; on a busy machine fewer can be faster). bf16 changes the output (the "
          "PSNR column is against fp32, not against the truth); PRECISION=bf16 turns it on. One run, on a shared "
          "machine: compare rows, not runs.\n")
    macs = common.conv_macs_per_pixel(upscaler.descriptor.model, upscaler.device, upscaler.dtype)
    print(f"Model: {fmt(macs / 1e3)} K multiply-adds per input pixel.\n")
    common.print_machine(upscaler, args.weights, width, height, load_avg_start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
