"""Helpers shared by the speed benchmarks: interleaved timing, peak memory and a description of the machine."""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
COCO_NEG = SHARED_DATA / "coco-val2017-neg"


def time_interleaved(cases: dict[str, Callable[[int], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Time each case `repeats` times, alternating between the cases in every round.

    On a shared machine the load changes from second to second. Alternating puts every case under the same load
    on average, so medians of the rounds compare fairly. Each call gets the round number, so a case can use
    fresh inputs every round. Warm-up rounds run first and are not recorded.
    """
    for round_index in range(warmup):
        for run in cases.values():
            run(-1 - round_index)
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    for round_index in range(repeats):
        for name, run in cases.items():
            started = time.perf_counter()
            run(round_index)
            seconds[name].append(time.perf_counter() - started)
    return seconds


def median(values: list[float]) -> float:
    return statistics.median(values)


def peak_rss_bytes() -> int:
    """Return the peak resident memory of this process so far, in bytes (VmHWM on Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmHWM is missing from /proc/self/status. Peak memory is only measured on Linux")


def rss_bytes() -> int:
    """Return the current resident memory of this process, in bytes (VmRSS on Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS is missing from /proc/self/status. Memory is only measured on Linux")


def describe_machine() -> dict:
    """Describe the CPU model, core count, load, thread count and library versions, to record beside each figure."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import transformers

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
    }


def format_machine(machine: dict) -> str:
    return (
        f"{machine['cpu']}, {machine['cores']} cores ({machine['cpu_capability']}), torch {machine['torch']} with "
        f"{machine['torch_threads']} threads, transformers {machine['transformers']}; load average at start "
        f"{machine['load_average_1min']}"
    )
