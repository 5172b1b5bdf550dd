"""Where a `producer enqueue` run's fixed cost goes, and what the whole process costs, in one run.

Phases (one in-process run of the CLI, timed at its seams): Python and the CLI's imports, torch, spandrel
(and the torchvision and torch._dynamo that spandrel's LaMa support pulls in), the model's load, each
forward pass (the first one includes oneDNN's set-up for the shape), the aggregation, the report, and,
measured apart, the interpreter's exit. Whole processes: ``producer enqueue INPUTS`` from start to exit,
``--rounds`` times, each round alternating the code under test with ``--before`` (an export of another
commit, e.g. ``git archive dbd8e15 | tar -x -C /tmp/before``) when given, and with ``--against`` (the same
code with other options, e.g. ``--weights models/lowlight-compact.safetensors --precision fp32``), on
fresh run stores; images/s is the inputs over the whole process's time.

    .venv/bin/python -m benchmarks.fixed_cost --inputs build/heldout/enqueue128/test --count 1 --rounds 3 \\
        --before /tmp/before
    .venv/bin/python -m benchmarks.fixed_cost --inputs build/heldout/enqueue128/test --count 128 --rounds 2 \\
        --against "--weights models/lowlight-compact.safetensors --precision fp32"
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import REPO, log, markdown_table

# Run in a child process: the CLI with timers at its seams, the marks printed as JSON on the last line.
TRACER = r"""
import json, sys, time
start = time.perf_counter()
marks = []
def mark(name):
    marks.append((name, time.perf_counter()))
import producer.cli
mark("Python + the CLI's imports (click, numpy, OpenCV, the pipeline)")
import torch
mark("import torch")
import spandrel
mark("import spandrel (+ torchvision, + torch._dynamo through torchvision.ops)")
import workers.ops.upscale as up
import producer.embedded as embedded
load, upscale = up.load_upscaler, up.Upscaler.upscale
def traced_load(*a, **k):
    result = load(*a, **k); mark("resolve, list, plan; load the model (weights, the precision rule)"); return result
count = [0]
def traced_upscale(self, *a, **k):
    result = upscale(self, *a, **k); count[0] += 1
    mark("first forward pass (with oneDNN's set-up)" if count[0] == 1 else "later forward passes"); return result
up.load_upscaler, up.Upscaler.upscale = traced_load, traced_upscale
aggregate, report = embedded.aggregate_stage, embedded.report_stage
def traced_aggregate(*a):
    mark("stores, rows and listing until the aggregation"); result = aggregate(*a); mark("aggregate"); return result
def traced_report(*a):
    result = report(*a); mark("report"); return result
embedded.aggregate_stage, embedded.report_stage = traced_aggregate, traced_report
sys.argv = ["producer", "enqueue", *sys.argv[1:]]
try:
    producer.cli.cli.main(standalone_mode=False)
except SystemExit:
    pass
print(json.dumps({"start": start, "marks": marks}))
"""


def phases(inputs: Path, store: Path, env: dict[str, str]) -> list[tuple[str, float]]:
    """(phase, seconds) of one traced run; the exit is measured from the outside."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", TRACER, str(inputs)],
        env={**env, "STORAGE_URL": str(store)},
        capture_output=True,
        text=True,
        check=True,
        cwd=store,
    )
    ended = time.perf_counter()
    trace = json.loads(done.stdout.strip().splitlines()[-1])
    rows: dict[str, float] = {}
    previous = trace["start"]
    for name, at in trace["marks"]:
        rows[name] = rows.get(name, 0.0) + at - previous
        previous = at
    # The child's clock and this one's differ: its own total, and the exit after its last mark from outside.
    inside = previous - trace["start"]
    rows["exit: the interpreter's teardown (measured around the process)"] = max(0.0, (ended - started) - inside)
    return list(rows.items())


def absolute_if_path(argument: str) -> str:
    """An option naming an existing file or folder, made absolute: each run starts in its own run store."""
    return str(Path(argument).resolve()) if not argument.startswith("-") and Path(argument).exists() else argument


def whole(inputs: Path, code: Path, env: dict[str, str], extra: list[str]) -> float:
    store = Path(tempfile.mkdtemp(prefix="fixed-cost-"))
    try:
        started = time.perf_counter()
        subprocess.run(
            [str(REPO / ".venv" / "bin" / "python"), "-m", "producer.cli", "enqueue", str(inputs), *extra],
            env={**env, "STORAGE_URL": str(store), "PYTHONPATH": str(code)},
            cwd=store,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=True,
        )
        return time.perf_counter() - started
    finally:
        shutil.rmtree(store, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__file__, __doc__)
    parser.add_argument("--inputs", type=Path, required=True, help="a folder of input images")
    parser.add_argument("--count", type=int, default=1, help="how many of its images (the first, sorted)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", type=Path, default=None, help="an export of the commit to compare with")
    parser.add_argument("--against", default=None, help="producer enqueue options of a second variant of this code")
    parser.add_argument("--no-phases", action="store_true", help="whole processes only")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="fixed-cost-inputs-"))
    for path in sorted(args.inputs.iterdir())[: args.count]:
        shutil.copy(path, folder)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    print(f"## `producer enqueue` on {args.count} input(s) of {args.inputs}\n")
    if not args.no_phases:
        log(f"phases of one run on {args.count} input(s)")
        store = Path(tempfile.mkdtemp(prefix="fixed-cost-"))
        traced = phases(folder, store, env)
        shutil.rmtree(store, ignore_errors=True)
        total = sum(seconds for _, seconds in traced)
        print(
            markdown_table(
                ("phase", "seconds", "share"),
                [(name, f"{s:.2f}", f"{100 * s / total:.0f}%") for name, s in traced]
                + [("total", f"{total:.2f}", "100%")],
            )
        )
    variants: list[tuple[str, Path, list[str]]] = [("this code, no options", REPO, [])]
    if args.against:
        variants.append((f"this code, {args.against}", REPO, [absolute_if_path(a) for a in shlex.split(args.against)]))
    if args.before:
        variants.append(("before, no options", args.before, []))
    times: dict[str, list[float]] = {label: [] for label, _, _ in variants}
    for _, (label, code, extra) in harness.interleaved(variants, args.rounds, lambda variant: variant[0]):
        times[label].append(whole(folder, code, env, extra))
    print(
        "\n| code | whole process, s (each round) | best | images/s (best) | median |\n| --- | --- | --- | --- | --- |"
    )
    for label, seconds in times.items():
        best = min(seconds)
        print(
            f"| {label} | {', '.join(f'{s:.2f}' for s in seconds)} | {best:.2f} | {args.count / best:.3g} | "
            f"{statistics.median(seconds):.2f} |"
        )
    print(f"\nLoad average at the end: {os.getloadavg()[0]:.1f} (one run each per round, alternating).")
    shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
