"""The benchmark as a pipeline task: settings from ``cfg.bench``, report files, MLflow metrics."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..bench.report import write_bench_report
from ..bench.run import BenchSettings, run_benchmark
from ..bench.workloads import DEFAULT_SCALES
from ..project import resolve_path
from ..tracking import RunLog


def bench_settings(cfg: DictConfig) -> BenchSettings:
    """Validated settings; a bad value fails here, before anything is built or timed."""
    bench = OmegaConf.to_container(cfg.bench, resolve=True)
    network = bench["network"] or {}
    checkpoint = network.get("checkpoint")
    return BenchSettings(
        rounds=bench["rounds"], threads=tuple(bench["threads"]), batches=tuple(bench["batches"]),
        group_sizes=tuple(bench["group_sizes"]), linear=tuple(bench["linear"] or ()), conv=tuple(bench["conv"] or ()),
        network_depth=network.get("depth"), network_checkpoint=resolve_path(checkpoint) if checkpoint else None,
        max_background_cpus=float(bench["max_background_cpus"]), require_idle=bool(bench["require_idle"]),
        gemv_scale_dtypes=tuple(bench.get("gemv_scale_dtypes") or ()),
        batched_scale_dtypes=tuple(bench.get("batched_scale_dtypes") or ()),
        torchvision_networks=tuple(bench["torchvision_networks"] or ()),
    )


def run_bench(cfg: DictConfig, log: RunLog, out_dir: str | Path) -> dict:
    """Time every workload, write the report to ``out_dir`` and log every timing to ``log``;
    returns the summary (targets, compile time, idle check) for the caller to record."""
    rows, machine = run_benchmark(bench_settings(cfg))
    summary, paths = write_bench_report(rows, machine, out_dir)
    log.set_tags({"bench.cpu": machine.cpu, "bench.idle": str(machine.idle)})
    log.log_metrics({_metric_key(row): row["median_ms"] for row in rows if row["median_ms"] is not None})
    for path in paths.values():
        log.log_artifact(path)
    return summary


def _metric_key(row: dict) -> str:
    scales = "" if row["scales"] == DEFAULT_SCALES else f"/{row['scales']}"
    return f"ms/{row['candidate']}/t{row['threads']}/{row['workload']}/b{row['batch']}/n{row['group_size']}{scales}"
