"""Side-by-side timing: every candidate runs once per round, rounds interleaved, so a burst of
machine noise hits all candidates alike; a cell reports the median with its min and max.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

PROC_STAT = Path("/proc/stat")
STAT_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)  # user nice system irq softirq steal (idle and iowait are not busy)


@dataclass(frozen=True)
class Timing:
    median_ms: float
    min_ms: float
    max_ms: float
    rounds: int


def time_interleaved(calls: Mapping[str, Callable[[], object]], rounds: int, warmup: int = 1) -> dict[str, Timing]:
    """Milliseconds per call of each candidate over ``rounds`` interleaved rounds, after warm-up
    calls that absorb compilation, allocator growth and lazy packing."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds!r}")
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    with torch.inference_mode():
        for call in calls.values():
            for _ in range(warmup):
                call()
        for _ in range(rounds):
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                seconds[name].append(time.perf_counter() - start)
    return {name: _summary(values) for name, values in seconds.items()}


def _summary(seconds: list[float]) -> Timing:
    ms = [1e3 * s for s in seconds]
    return Timing(statistics.median(ms), min(ms), max(ms), len(ms))


def background_cpus(window_s: float = 1.0) -> float | None:
    """CPUs kept busy by other processes over ``window_s`` (this process sleeps meanwhile).

    Read from /proc/stat, so None where it does not exist (not Linux): the check is then unknown.
    """
    if not PROC_STAT.exists():
        return None
    before_busy, before_total = _cpu_ticks()
    own_before = time.process_time()
    time.sleep(window_s)
    after_busy, after_total = _cpu_ticks()
    own_ticks = (time.process_time() - own_before) * os.sysconf("SC_CLK_TCK")
    total = after_total - before_total
    if total <= 0:
        return None
    cpus = os.cpu_count() or 1
    return max(0.0, (after_busy - before_busy - own_ticks) / total * cpus)


def _cpu_ticks() -> tuple[int, int]:
    fields = [int(v) for v in PROC_STAT.read_text().splitlines()[0].split()[1:]]
    return sum(fields[i] for i in STAT_BUSY_FIELDS if i < len(fields)), sum(fields[:8])
