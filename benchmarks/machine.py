"""The machine a result belongs to: CPU model, flags, cores and clock, the device and its peak FLOP/s, and
the load average; :func:`description` gathers them into the rows every benchmark's output ends with.

Read from ``/proc/cpuinfo``, cpufreq and torch; nothing is assumed where it can be read. torch and OpenCV
are imported inside functions so a benchmark's ``--help`` stays instant.
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Dense fp16 tensor-core peaks (no sparsity), TFLOP/s, from the vendors' data sheets. First match wins.
CUDA_FP16_PEAK_TFLOPS: tuple[tuple[str, float, str], ...] = (
    (r"h100.*pcie", 756.0, "H100 PCIe"),
    (r"h100", 989.0, "H100 SXM"),
    (r"h200", 989.0, "H200"),
    (r"a100", 312.0, "A100"),
    (r"\ba10\b", 125.0, "A10"),
    (r"\bl4\b", 121.0, "L4"),
    (r"\bt4\b", 65.0, "T4"),
)
# The CPU flags the table names, when the CPU has them: the vector and matrix units torch can use.
SHOWN_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile")


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty off Linux)."""
    info: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        if not line.strip():
            if info:
                break
            continue
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    return info


def cpu_model() -> str:
    info = _cpuinfo()
    return info.get("model name") or platform.processor() or platform.machine() or "unknown"


def cpu_flags() -> set[str]:
    return set(_cpuinfo().get("flags", "").split())


def core_count() -> int:
    """Cores this process may use (affinity), which is what the benchmarks can load."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def cpu_ghz() -> tuple[float, str]:
    """Clock in GHz and where it comes from (cpufreq's maximum, else /proc/cpuinfo's current MHz)."""
    try:
        khz = int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text())
        return khz / 1e6, "cpufreq max"
    except (OSError, ValueError):
        pass
    mhz = _cpuinfo().get("cpu MHz")
    if mhz:
        return float(mhz) / 1000, "/proc/cpuinfo cpu MHz"
    return 0.0, "unknown"


def cpu_flops_per_cycle(flags: set[str] | None = None) -> tuple[int, str]:
    """fp32 FLOP per cycle per core, assuming two FMA pipes as wide as the widest vector ISA."""
    flags = cpu_flags() if flags is None else flags
    if "avx512f" in flags:
        return 64, "AVX-512 FMA fp32: 2 FMA x 16 lanes x 2 = 64 FLOP/cycle/core"
    if "avx2" in flags and "fma" in flags:
        return 32, "AVX2 FMA fp32: 2 FMA x 8 lanes x 2 = 32 FLOP/cycle/core"
    if "avx" in flags:
        return 16, "AVX fp32, no FMA: 16 FLOP/cycle/core"
    return 8, "SSE fp32: 8 FLOP/cycle/core"


@dataclass(frozen=True)
class Peak:
    flops: float  # FLOP/s; 0 when unknown
    assumption: str


def device_peak(device: Any) -> Peak:
    """Peak FLOP/s of ``device``: a data-sheet fp16 figure on CUDA, cores x GHz x FLOP/cycle on CPU."""
    if device.type == "cuda":
        import torch

        name = torch.cuda.get_device_name(device)
        for pattern, tflops, label in CUDA_FP16_PEAK_TFLOPS:
            if re.search(pattern, name.lower()):
                return Peak(tflops * 1e12, f"{label} dense fp16 tensor-core peak {tflops:g} TFLOP/s (data sheet)")
        return Peak(0.0, f"no peak on record for {name!r}")
    cores, (ghz, source), (per_cycle, why) = core_count(), cpu_ghz(), cpu_flops_per_cycle()
    flops = cores * ghz * 1e9 * per_cycle
    return Peak(
        flops,
        f"{cores} cores x {ghz:.2f} GHz ({source}) x {per_cycle} FLOP/cycle ({why}) "
        f"= {flops / 1e12:.3f} TFLOP/s; an estimate, no turbo, no AMX",
    )


def device_name(device: Any) -> str:
    if device.type == "cuda":
        import torch

        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {cpu_model()}"


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def description(device: Any, model: str, image_size: str) -> list[tuple[str, str]]:
    """(what, value) rows of the machine and the workload a result belongs to."""
    import cv2
    import torch

    flags = cpu_flags()
    isa = ", ".join(f for f in SHOWN_FLAGS if f in flags) or "n/a"
    threads = torch.get_num_threads()
    return [
        ("CPU", f"{cpu_model()} (flags: {isa})"),
        ("cores", f"{core_count()} usable of {os.cpu_count()}"),
        ("torch", f"{torch.__version__} ({threads} thread{'' if threads == 1 else 's'}), OpenCV {cv2.__version__}"),
        ("device", device_name(device)),
        ("model", model),
        ("image size", image_size),
        ("load average (1, 5, 15 min)", load_average()),
    ]
