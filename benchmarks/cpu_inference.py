"""CPU inference of the default model: what each setting and runtime buys, in one run.

The same 256x160 images go through the shipped default model with: fp32 and bf16 (the weights in bf16,
what ``PRECISION=bf16`` and the precision rule's ``auto`` run; and bf16 autocast), NCHW and
``channels_last`` memory, 1 thread and one per core, batch 1 and 4, ``torch.compile``, and, when they are
installed (both on PyPI: ``pip install onnxruntime onnx openvino``), ONNX Runtime and OpenVINO on the same
network exported to ONNX. Each row's images/s is compared with fp32 NCHW at torch's default threads
("before") and its uint8 output with that row's. Rounds interleave the rows (``--rounds``), so a load that
drifts weighs on every row alike; a row's time is its best round (on a shared machine the least disturbed
one is the closest to what the setting costs; the median is printed beside it).

Another runtime is adopted only if it is at least 1.3x faster than torch's best row *of the same precision*
in this run, with the same output (at most one level apart from fp32, or for a bf16 row the bf16 agreement
of ``workers/ops/device.py``). The last row is the production upscaler (``Upscaler.upscale``: conversion,
rounding and copies included) with ``PRECISION=auto``.

    python -m benchmarks.cpu_inference --count 8 --rounds 3
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import harness, machine, workload
from benchmarks.harness import fmt, log

ADOPT_AT = 1.3  # speed-up another runtime must give over torch's best, with the same output, to be adopted
SAME_OUTPUT_LEVELS = 1  # fp32 in another summation order may flip a rare rounding by one level


@dataclass(frozen=True)
class Setting:
    label: str
    runtime: str = "torch"  # torch, onnxruntime, openvino
    precision: str = "fp32"  # fp32, bf16 (weights), bf16-autocast
    channels_last: bool = True
    threads: int = 0  # 0: one per core
    batch: int = 1
    compile: bool = False


def settings(cores: int, with_compile: bool, runtimes: list[str]) -> list[Setting]:
    rows = [Setting("fp32, NCHW (before)", channels_last=False),
            Setting("fp32, channels_last"),
            Setting("fp32, channels_last, 1 thread", threads=1),
            Setting("fp32, channels_last, batch 4", batch=4)]
    if with_compile:
        rows.append(Setting("fp32, channels_last, torch.compile", compile=True))
    rows += [Setting("bf16, channels_last (PRECISION=bf16; auto where native and agreed)", precision="bf16"),
             Setting("bf16, NCHW", precision="bf16", channels_last=False),
             Setting("bf16, channels_last, 1 thread", precision="bf16", threads=1),
             Setting("bf16, channels_last, batch 4", precision="bf16", batch=4),
             Setting("bf16 autocast (fp32 weights), channels_last", precision="bf16-autocast")]
    if with_compile:
        rows.append(Setting("bf16, channels_last, torch.compile", precision="bf16", compile=True))
    if "onnxruntime" in runtimes:
        rows += [Setting("ONNX Runtime fp32", runtime="onnxruntime", channels_last=False),
                 Setting("ONNX Runtime fp32, 1 thread", runtime="onnxruntime", channels_last=False, threads=1)]
    if "openvino" in runtimes:
        rows += [Setting("OpenVINO fp32", runtime="openvino", channels_last=False),
                 Setting("OpenVINO bf16 (its inference precision hint)", runtime="openvino", precision="bf16",
                         channels_last=False)]
    if cores > 2:
        rows.append(Setting(f"bf16, channels_last, {cores // 2} threads", precision="bf16", threads=cores // 2))
    return rows


def available_runtimes() -> list[str]:
    found = []
    for name in ("onnxruntime", "openvino"):
        try:
            __import__(name)
            __import__("onnx")
            found.append(name)
        except ImportError:
            pass
    return found


class Runner:
    """One setting, prepared once (a model copy in its dtype and layout, a compiled or exported network)."""

    def __init__(self, setting: Setting, model: Any, onnx_path: Path | None, default_threads: int) -> None:
        import copy

        import torch

        self.setting, self.default_threads = setting, default_threads
        self.first_call_s = 0.0
        threads = setting.threads or default_threads
        if setting.runtime == "torch":
            layout = torch.channels_last if setting.channels_last else torch.contiguous_format
            net = copy.deepcopy(model).eval()
            if setting.precision == "bf16":
                net = net.to(torch.bfloat16)
            net = net.to(memory_format=layout)
            self.dtype = torch.bfloat16 if setting.precision == "bf16" else torch.float32
            self.layout = layout
            self.net: Callable[[Any], Any] = torch.compile(net) if setting.compile else net
        elif setting.runtime == "onnxruntime":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        else:
            import openvino as ov

            config = {"INFERENCE_NUM_THREADS": threads,
                      "INFERENCE_PRECISION_HINT": "bf16" if setting.precision == "bf16" else "f32"}
            self.compiled = ov.Core().compile_model(str(onnx_path), "CPU", config)

    def __call__(self, x: Any) -> Any:
        """N x 3 x H x W float in [0, 1] -> uint8 N x 3 x 4H x 4W."""
        import torch

        s = self.setting
        if s.runtime == "torch":
            torch.set_num_threads(s.threads or self.default_threads)
            try:
                with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=s.precision == "bf16-autocast"):
                    y = self.net(x.to(self.dtype).contiguous(memory_format=self.layout))
            finally:
                torch.set_num_threads(self.default_threads)
        elif s.runtime == "onnxruntime":
            y = torch.from_numpy(self.session.run(None, {"input": x.numpy()})[0])
        else:
            y = torch.from_numpy(self.compiled(x.numpy())[0])
        return y.float().clamp(0, 1).mul(255).round().to(torch.uint8)


def export_onnx(model: Any, folder: Path, height: int, width: int) -> Path | None:
    import torch

    path = folder / "model.onnx"
    try:
        torch.onnx.export(model.eval(), (torch.zeros(1, 3, height, width),), str(path), input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                          opset_version=17, dynamo=False)
    except Exception as exc:  # noqa: BLE001 - an exporter that cannot take the network leaves the rows out
        log(f"ONNX export failed ({type(exc).__name__}: {exc}); no ONNX Runtime or OpenVINO rows")
        return None
    return path


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__file__, __doc__)
    harness.add_common_arguments(parser, count=8)
    parser.add_argument("--rounds", type=int, default=3, help="rounds over every row, interleaved [default: 3]")
    parser.add_argument("--no-compile", action="store_true", help="leave out torch.compile (it compiles for a minute)")
    parser.add_argument("--no-runtimes", action="store_true", help="leave out ONNX Runtime and OpenVINO")
    args = harness.parse_common(parser, argv)
    import torch

    from workers.io.models import load_registry, models_folder
    from workers.ops.device import CpuCapabilities
    from workers.ops.metrics import psnr
    from workers.ops.upscale import load_descriptor, load_upscaler

    registry = load_registry(models_folder())
    weights = args.weights if args.weights != harness.default_weights() else registry.path(registry.default)
    bench = harness.start("cpu", args.torch_threads)
    default_threads = torch.get_num_threads()
    width, height = args.size
    images = workload.synthetic_images(args.count, width, height)
    singles = [torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255) for image in images]
    model = load_descriptor(weights).model.eval()
    runtimes = [] if args.no_runtimes else available_runtimes()
    folder = Path(tempfile.mkdtemp(prefix="cpu-inference-"))
    onnx_path = export_onnx(model, folder, height, width) if runtimes else None
    runtimes = runtimes if onnx_path else []
    rows = settings(machine.core_count(), not args.no_compile, runtimes)
    runners = {}
    for setting in rows:
        log(f"preparing {setting.label}")
        runner = Runner(setting, model, onnx_path, default_threads)
        batch = singles[0] if setting.batch == 1 else torch.cat(singles[: setting.batch])
        _, runner.first_call_s = harness.timed(lambda r=runner, b=batch: r(b))
        runners[setting] = runner
    times: dict[Setting, list[float]] = {s: [] for s in rows}
    outputs: dict[Setting, list[Any]] = {}
    for _, setting in harness.interleaved(rows, args.rounds, lambda setting: setting.label):
        batches = [torch.cat(singles[i : i + setting.batch]) for i in range(0, len(singles), setting.batch)]
        started = time.perf_counter()
        result = [runners[setting](b) for b in batches]
        times[setting].append((time.perf_counter() - started) / len(singles))
        outputs[setting] = [image for out in result for image in out]

    log("production upscaler (Upscaler.upscale, PRECISION=auto)")
    production = load_upscaler(weights, "cpu", "auto")
    measured = workload.measure_upscale(production, images, 1)

    reference = outputs[rows[0]]
    seconds = {s: min(times[s]) for s in rows}
    medians = {s: statistics.median(times[s]) for s in rows}
    before = seconds[rows[0]]

    def torch_best(precision: str) -> float:
        return min(seconds[s] for s in rows if s.runtime == "torch" and s.precision.startswith(precision))

    table = []
    for setting in rows:
        out = outputs[setting]
        worst = int(max(int((a.int() - b.int()).abs().max()) for a, b in zip(out, reference, strict=True)))
        closeness = min(psnr(a.numpy(), b.numpy()) for a, b in zip(out, reference, strict=True))
        output = "identical" if worst == 0 else f"max {worst} levels, {closeness:.1f} dB"
        if setting.runtime == "torch":
            verdict = "baseline" if setting is rows[0] else "-"
        else:
            gain = torch_best(setting.precision) / seconds[setting]
            same = worst <= SAME_OUTPUT_LEVELS or setting.precision == "bf16"
            verdict = (f"adopt ({gain:.2f}x torch's best {setting.precision})" if gain >= ADOPT_AT and same else
                       f"no: {gain:.2f}x torch's best {setting.precision}" + ("" if same else ", other output"))
        table.append((setting.label, fmt(1000 * seconds[setting]), fmt(1000 * medians[setting]), fmt(1 / seconds[setting]),
                      f"{before / seconds[setting]:.2f}x", output, f"{runners[setting].first_call_s:.2f}", verdict))
        harness.record(args, setting.label, before / seconds[setting], "x vs before",
                      f"{fmt(1 / seconds[setting])} images/s; output {output}; {verdict}")
    table.append((f"production Upscaler.upscale, auto: {production.precision}", fmt(measured.ms_per_image), "-",
                  fmt(measured.images_per_second), f"{before * measured.images_per_second:.2f}x", "-", "-", "-"))
    print(f"## CPU inference of {weights.name}: {args.count} images {width}x{height} -> {4 * width}x{4 * height}, "
          f"best of {args.rounds} interleaved rounds\n")
    print(harness.markdown_table(("setting", "ms/image", "median ms", "images/s", "vs before", "output vs fp32 NCHW",
                                 "first call s", "verdict"), table))
    print(f"\nThe production row's precision: {production.precision_reason}.\n")
    print(f"Another runtime is adopted where it is at least {ADOPT_AT}x faster than torch's best row of its precision "
          f"here with the same output. Threads: a setting of the machine (torch's default is one per core). "
          f"{CpuCapabilities.detect().describe()}. One run on a shared machine: compare rows, not runs.\n")
    macs = workload.conv_macs_per_pixel(model, torch.device("cpu"), torch.float32, size=64)
    print(f"Model: {fmt(macs / 1e3)} K multiply-adds per input pixel.\n")
    print(bench.upscaler_table(production, weights, width, height))
    return 0


if __name__ == "__main__":
    sys.exit(main())
