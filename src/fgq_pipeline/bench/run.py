"""One benchmark run: build each workload once, time it at every thread count, and record how
busy the machine was before and after, since other processes inflate and scatter the timings."""

from __future__ import annotations

import os
import platform
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numba
import torch
import torchvision
from tqdm.auto import tqdm

from fgq_pipeline.checks import require_int
from fgq_pipeline.kernels.scales import SCALE_DTYPES

from .ceilings import kernel_ceilings
from .compile_time import compile_and_cache_load_seconds
from .timing import background_cpus, time_interleaved
from .workloads import (
    CANDIDATES,
    DEFAULT_SCALES,
    TORCH_QUANTIZED_DEPRECATION,
    TORCHVISION,
    Workload,
    conv_workload,
    linear_workload,
    network_workload,
    torchvision_workload,
)

LINEAR_KEYS = ("in_features", "out_features")
NARROW_SCALE_DTYPES = tuple(dtype for dtype in SCALE_DTYPES if dtype != DEFAULT_SCALES)
CONV_KEYS = ("in_channels", "out_channels", "kernel", "stride", "padding", "size")
TORCHVISION_KEYS = ("arch", "size")


@dataclass(frozen=True)
class BenchSettings:
    rounds: int
    threads: tuple[int, ...]
    batches: tuple[int, ...]
    group_sizes: tuple[int, ...]
    linear: tuple[Mapping, ...]  # {name, in_features, out_features}
    conv: tuple[Mapping, ...]  # {name, in_channels, out_channels, kernel, stride, padding, size}
    network_depth: int | None
    network_checkpoint: Path | None
    max_background_cpus: float
    require_idle: bool
    gemv_scale_dtypes: tuple[str, ...] = ()  # batch-1 linear workloads repeated with these stored scales
    batched_scale_dtypes: tuple[str, ...] = ()  # conv and whole-network workloads repeated with these, every batch
    torchvision_networks: tuple[Mapping, ...] = ()  # {arch, size}: batch 1, the lowest thread count only

    def __post_init__(self) -> None:
        require_int("bench.rounds", self.rounds)
        cpus = os.cpu_count() or 1
        for name, values in (("threads", self.threads), ("batches", self.batches), ("group_sizes", self.group_sizes)):
            if not values:
                raise ValueError(f"bench.{name} is empty; give at least one value")
            for value in values:
                require_int(f"bench.{name}", value)
        if max(self.threads) > min(cpus, numba.config.NUMBA_NUM_THREADS):
            raise ValueError(f"bench.threads={list(self.threads)} asks for more threads than the "
                             f"{min(cpus, numba.config.NUMBA_NUM_THREADS)} this machine gives Numba")
        for kind, keys, shapes in (("linear", LINEAR_KEYS, self.linear), ("conv", CONV_KEYS, self.conv)):
            for index, shape in enumerate(shapes):
                if set(shape) != {"name", *keys}:
                    raise ValueError(f"bench.{kind}[{index}] must give exactly {['name', *keys]}, got {sorted(shape)}")
                for key in keys:
                    require_int(f"bench.{kind}[{index}].{key}", shape[key], minimum=0 if key == "padding" else 1)
        for index, network in enumerate(self.torchvision_networks):
            if set(network) != set(TORCHVISION_KEYS):
                raise ValueError(f"bench.torchvision_networks[{index}] must give exactly {list(TORCHVISION_KEYS)}, "
                                 f"got {sorted(network)}")
            if network["arch"] not in torchvision.models.list_models(module=torchvision.models):
                raise ValueError(f"bench.torchvision_networks[{index}].arch must name a torchvision classifier "
                                 f"(torchvision.models.list_models()), got {network['arch']!r}")
            require_int(f"bench.torchvision_networks[{index}].size", network["size"])
        if self.max_background_cpus < 0:
            raise ValueError(f"bench.max_background_cpus must be >= 0, got {self.max_background_cpus!r}")
        for name, dtypes in (("gemv_scale_dtypes", self.gemv_scale_dtypes),
                             ("batched_scale_dtypes", self.batched_scale_dtypes)):
            for scale_dtype in dtypes:
                if scale_dtype not in NARROW_SCALE_DTYPES:
                    raise ValueError(f"bench.{name} takes {list(NARROW_SCALE_DTYPES)} (fp32 always runs), "
                                     f"got {scale_dtype!r}")


@dataclass(frozen=True)
class Machine:
    cpu: str
    cpus: int
    background_cpus_before: float | None
    background_cpus_after: float | None
    max_background_cpus: float
    compile_s: float
    cache_load_s: float
    ceilings: Mapping[str, float] = field(default_factory=dict)  # G MAC/s per core, see ceilings.py
    numba: str = numba.__version__
    torch: str = torch.__version__

    @property
    def idle(self) -> bool | None:
        """Whether other processes stayed under the limit before and after (None: unknown)."""
        loads = [load for load in (self.background_cpus_before, self.background_cpus_after) if load is not None]
        return max(loads) <= self.max_background_cpus if loads else None


def check_idle(settings: BenchSettings, when: str) -> float | None:
    """Other processes' CPU use; an error when it exceeds the limit and ``require_idle`` is set."""
    load = background_cpus()
    if load is not None and load > settings.max_background_cpus:
        message = (f"the machine is busy {when} the benchmark: other processes use {load:.2f} CPUs "
                   f"(bench.max_background_cpus={settings.max_background_cpus}); ")
        if settings.require_idle:
            raise RuntimeError(message + "stop them, or set bench.require_idle=false to time anyway")
        print("warning: " + message + "the timings will be inflated and scattered")
    return load


def workloads(settings: BenchSettings) -> Iterator[Callable[[], Workload]]:
    """Builders, so only one workload's weights and inputs are in memory at a time."""
    for group_size in settings.group_sizes:
        for batch in settings.batches:
            for shape in settings.linear:
                yield lambda s=shape, b=batch, g=group_size: linear_workload(**s, batch=b, group_size=g)
                if batch == 1:
                    for scale_dtype in settings.gemv_scale_dtypes:
                        yield lambda s=shape, g=group_size, d=scale_dtype: linear_workload(
                            **s, batch=1, group_size=g, scale_dtype=d)
            for scale_dtype in (DEFAULT_SCALES, *settings.batched_scale_dtypes):
                for shape in settings.conv:
                    yield lambda s=shape, b=batch, g=group_size, d=scale_dtype: conv_workload(
                        **s, batch=b, group_size=g, scale_dtype=d)
                if settings.network_depth is not None:
                    yield lambda b=batch, g=group_size, d=scale_dtype: network_workload(
                        settings.network_depth, b, g, settings.network_checkpoint, scale_dtype=d)
        for network in settings.torchvision_networks:
            yield lambda n=network, g=group_size: torchvision_workload(**n, group_size=g)


def run_benchmark(settings: BenchSettings) -> tuple[list[dict], Machine]:
    """One row per (workload, batch, group size, thread count, candidate), and the machine's state."""
    before = check_idle(settings, "before")
    compile_s, cache_load_s = compile_and_cache_load_seconds()
    ceilings = kernel_ceilings()
    rows = []
    builders = list(workloads(settings))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=TORCH_QUANTIZED_DEPRECATION)
        for build in tqdm(builders, desc="bench", unit="workload"):
            workload = build()
            for threads in _thread_counts(workload, settings):
                _set_threads(workload, threads)
                timings = time_interleaved(workload.candidates, settings.rounds)
                rows += [_row(workload, threads, candidate, timings.get(candidate)) for candidate in CANDIDATES]
    after = check_idle(settings, "after")
    machine = Machine(_cpu_name(), os.cpu_count() or 1, before, after, settings.max_background_cpus,
                      compile_s, cache_load_s, ceilings)
    return rows, machine


def _thread_counts(workload: Workload, settings: BenchSettings) -> tuple[int, ...]:
    """Whole torchvision networks run at the lowest thread count only, the one their target is set at."""
    return (min(settings.threads),) if workload.kind == TORCHVISION else settings.threads


def _set_threads(workload: Workload, threads: int) -> None:
    """Every candidate at ``threads``: Numba's and torch's pools, and the workload's own sessions."""
    numba.set_num_threads(threads)
    torch.set_num_threads(threads)
    for set_threads in workload.on_threads:
        set_threads(threads)


def _row(workload: Workload, threads: int, candidate: str, timing) -> dict:
    row = {"workload": workload.name, "kind": workload.kind, "shape": workload.shape, "batch": workload.batch,
           "group_size": workload.group_size, "scales": workload.scales,
           "potential_speedup": workload.potential_speedup, "weight_macs": workload.weight_macs, "threads": threads,
           "candidate": candidate}
    if timing is None:
        return {**row, "median_ms": None, "min_ms": None, "max_ms": None, "rounds": 0,
                "note": workload.skipped.get(candidate, "not run")}
    return {**row, **asdict(timing), "note": ""}


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()
