"""What every benchmark does around its own measurement: its options, its start, timing, interleaved rounds,
recording, its tables, and the temporary servers and workers of the distributed ones.

A benchmark is a module of this package, run from the repository root as ``python -m benchmarks.NAME``:

    def main(argv: list[str] | None = None) -> int:
        parser = harness.parser(__file__, __doc__)
        harness.add_common_arguments(parser)  # --device, --weights, --size, --count, --quick, --results, ...
        args = harness.parse_common(parser, argv)
        bench = harness.start(args.device, args.torch_threads)
        ...  # measure; print harness.markdown_table(...) and harness.record(args, ...) the headline numbers
        print(bench.machine_table(model, image_size))
        return 0

Progress goes to stderr (:func:`log`), so stdout holds only the Markdown report. Nothing here asserts
anything about speed: the benchmarks measure and print, the reader judges. torch, OpenCV, the pipeline
and ``testbed`` are imported inside functions so ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from benchmarks import machine

T = TypeVar("T")

REPO = Path(__file__).resolve().parent.parent
PRODUCER = REPO / ".venv" / "bin" / "producer"  # the CLI, for benchmarks that run it as a user does
SHIPPED_MODEL = REPO / "models" / "lowlight-compact.safetensors"
DEFAULT_SIZE = (256, 160)
DEFAULT_WEIGHTS = REPO.parent / "shared" / "weights" / "RealESRGAN_x4plus.pth"
DEFAULT_WEIGHTS_DIR = DEFAULT_WEIGHTS.parent
QUICK_SIZE = (16, 12)
QUICK_COUNT = 2


def log(message: str) -> None:
    """Progress goes to stderr, so stdout holds only the Markdown report."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- options ------------------------------------------------------------------------------------------


def parser(file: str, doc: str | None) -> argparse.ArgumentParser:
    """The benchmark's parser, named as it is run (``python -m benchmarks.NAME``): the first paragraph of
    its docstring above the options, the rest below them. ``args.script`` is NAME (see :func:`record`)."""
    name = Path(file).stem
    summary, _, details = (doc or "").strip().partition("\n\n")
    result = argparse.ArgumentParser(
        prog=f"python -m benchmarks.{name}",
        description=summary,
        epilog=details or None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    result.set_defaults(script=name)
    return result


def parse_size(text: str) -> tuple[int, int]:
    """``"256x160"`` -> ``(256, 160)`` (width, height)."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or int(match[1]) < 1 or int(match[2]) < 1:
        raise ValueError(f"size must look like WIDTHxHEIGHT, e.g. 256x160, got {text!r}")
    return int(match[1]), int(match[2])


def default_weights() -> Path:
    """``WEIGHTS`` from the environment when set, else the shared RealESRGAN_x4plus stand-in."""
    env = os.environ.get("WEIGHTS")
    return Path(env) if env else DEFAULT_WEIGHTS


def add_common_arguments(parser: argparse.ArgumentParser, size: bool = True, count: int | None = 8) -> None:
    """``--device``, ``--weights``, ``--quick``, ``--results``, ``--torch-threads`` and (optionally)
    ``--size`` and ``--count`` (with this default)."""
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where the upscaler runs (auto: CUDA when present) [default: auto]",
    )
    parser.add_argument(
        "--weights",
        type=Path,
        default=default_weights(),
        help="checkpoint spandrel can load (a 3-channel x4 model) [default: $WEIGHTS or %(default)s]",
    )
    if size:
        parser.add_argument(
            "--size",
            type=parse_size,
            default=DEFAULT_SIZE,
            metavar="WxH",
            help="input image size, before the x4 upscale [default: 256x160]",
        )
    if count is not None:
        parser.add_argument("--count", type=int, default=count, help=f"number of images [default: {count}]")
    parser.add_argument(
        "--quick", action="store_true", help=f"smoke run: {QUICK_COUNT} images of {QUICK_SIZE[0]}x{QUICK_SIZE[1]}"
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        metavar="FILE",
        help="also append the headline numbers to FILE as JSON lines (scripts/device-check builds its one "
        "table from them)",
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="torch intra-op threads in this process (and OMP_NUM_THREADS for workers it starts); "
        "0: torch's default, one per core [default: 0]",
    )


def parse_common(parser: argparse.ArgumentParser, argv: list[str] | None, min_count: int = 1) -> argparse.Namespace:
    """Parse ``argv``; ``--quick`` shrinks ``--size`` and ``--count`` to a smoke run."""
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.count = QUICK_SIZE, QUICK_COUNT
    if args.count < min_count:
        parser.error(f"--count must be >= {min_count}")
    return args


def record(args: argparse.Namespace, metric: str, value: float | str, unit: str = "", note: str = "") -> None:
    """Append one headline number to ``--results`` (nothing without it): what a summary of several
    benchmarks' runs is built from, so no one parses Markdown."""
    path = getattr(args, "results", None)
    if path is None:
        return
    line = {
        "script": args.script,
        "metric": metric,
        "value": value if isinstance(value, str) else float(value),
        "unit": unit,
        "note": note,
    }
    with Path(path).open("a", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\n")


# -- the start and the closing table ------------------------------------------------------------------


@dataclass(frozen=True)
class Bench:
    """One benchmark run: the device it measures and the load average when it started."""

    device: Any  # torch.device
    load_at_start: str

    def machine_table(self, model: str, image_size: str, device: Any = None) -> str:
        """The machine and workload the results belong to (on ``device``, default this run's): the table
        every benchmark's output ends with."""
        rows = machine.description(device or self.device, model, image_size)
        return markdown_table(("machine", "value"), [*rows, ("load average at start", self.load_at_start)])

    def upscaler_table(self, upscaler: Any, weights: Path, width: int, height: int) -> str:
        """:meth:`machine_table` for ``upscaler`` (``workers.ops.upscale.Upscaler``) on width x height inputs."""
        from benchmarks.workload import describe_model

        model = describe_model(weights, upscaler.descriptor, upscaler.dtype)
        return self.machine_table(model, f"{width}x{height} -> {4 * width}x{4 * height}", upscaler.device)


def start(device: str = "cpu", torch_threads: int = 0) -> Bench:
    """Pin torch's threads (0 leaves torch's default), resolve ``device`` (``auto``: CUDA when available)
    and note the load average. On a busy machine, OpenMP threads that wait for each other at every layer
    can make 2 threads several times slower than 1: ``--torch-threads 1`` gives steadier numbers there."""
    import torch

    load = machine.load_average()
    if torch_threads > 0:
        torch.set_num_threads(torch_threads)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available here")
    return Bench(torch.device(device), load)


# -- timing -------------------------------------------------------------------------------------------


def synchronize(device: Any) -> None:
    """Wait for the device's queued work (CUDA); nothing on a CPU."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def timed(fn: Callable[[], T], device: Any = None) -> tuple[T, float]:
    """``(fn(), seconds)``, with ``device`` (when given) synchronised on both sides."""
    if device is not None:
        synchronize(device)
    started = time.perf_counter()
    result = fn()
    if device is not None:
        synchronize(device)
    return result, time.perf_counter() - started


def interleaved(items: Sequence[T], rounds: int, label: Callable[[T], str] = str) -> Iterator[tuple[int, T]]:
    """``(round, item)`` for every item in every round: in order on even rounds, in reverse order on odd
    ones (ABBA), so a machine whose load drifts during the run slows every item alike, not the last ones."""
    for number in range(rounds):
        for item in items if number % 2 == 0 else reversed(items):
            log(f"round {number + 1} of {rounds}: {label(item)}")
            yield number, item


# -- tables -------------------------------------------------------------------------------------------


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def fmt(value: float, digits: int = 3) -> str:
    """Compact number: 3 significant digits, no exponent for ordinary magnitudes."""
    if value != value:  # NaN
        return "n/a"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    decimals = max(digits - 1 - math.floor(math.log10(magnitude)), 0)
    return f"{value:.{decimals}f}"


# -- servers and workers (the distributed benchmarks) -------------------------------------------------


@dataclass(frozen=True)
class Servers:
    """redis-server and a SeaweedFS S3 server with one bucket on 127.0.0.1 (``testbed/``), and the
    environment workers and the producer need to use them (``testbed.workers.cluster_env``)."""

    redis: Any  # testbed.servers.RedisServer
    s3: Any  # testbed.servers.S3Server
    bucket: str
    env: dict[str, str]
    startup: dict[str, float]  # seconds each server took to start


@contextlib.contextmanager
def servers(folder: Path, weights: Path, appendonly: bool = False, **env: str) -> Iterator[Servers]:
    """Start redis-server (``appendonly``: with its append-only file) and S3 with data in ``folder``, the
    workers' ``WEIGHTS`` set to ``weights`` and ``env`` added; stop both on the way out."""
    from testbed.servers import RedisServer, S3Server
    from testbed.workers import cluster_env

    with contextlib.ExitStack() as stack:
        redis, redis_s = timed(lambda: RedisServer(folder / "redis", appendonly=appendonly))
        stack.enter_context(redis)
        s3, s3_s = timed(lambda: S3Server(folder / "s3"))
        stack.enter_context(s3)
        bucket = s3.make_bucket("bench")
        shared = cluster_env(dict(os.environ), redis, 0, s3, bucket, weights, **env)
        yield Servers(redis, s3, bucket, shared, {"redis-server": redis_s, "S3 (weed mini)": s3_s})


@contextlib.contextmanager
def celery_workers(env: dict[str, str], logs: Path, cpu_processes: int, gpu: bool = True) -> Iterator[list[Any]]:
    """A CPU worker of ``cpu_processes`` processes and (``gpu``) a GPU-queue worker with the solo pool,
    each ready before this yields (``testbed.workers.CeleryWorker``); all warm-shut-down on the way out."""
    from testbed.workers import CeleryWorker, stop_workers

    logs.mkdir(parents=True, exist_ok=True)
    started: list[CeleryWorker] = []
    try:
        started.append(CeleryWorker("cpu", env, logs, concurrency=cpu_processes))
        if gpu:
            started.append(CeleryWorker("gpu", env, logs))
        for worker in started:
            worker.wait_ready()
        yield started
    finally:
        stop_workers(started)
