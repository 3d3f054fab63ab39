"""Benchmark tables and plot for ``reports/``: per-cell medians with their spread, speedups against
torch and ONNX Runtime at the same thread count, the paper's potential speedup beside them, the
ternary path's weight-MAC rate per core, and the targets."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fgq_pipeline.atomic import atomic_path, write_text_atomically
from fgq_pipeline.render import markdown_table, new_figure, save_png

from .ceilings import INT8_WEIGHTS, ceiling_label
from .run import Machine
from .workloads import CANDIDATES, DEFAULT_SCALES, FP32, INT8, NUMBA, ORT, TORCHVISION

CELL_KEYS = ["threads", "kind", "workload", "shape", "batch", "group_size", "scales"]
PNG_DPI = 110
TARGET_HEADER = ["target", "N", "scales", "threads", "required", "measured (worst case)", "met"]
CELL_HEADER = ["workload", "shape", "batch", "N", "scales", "Numba ternary ms", "torch fp32 ms", "torch int8 ms",
               "ORT int8 ms", "vs fp32", "vs int8", "vs ORT int8", "Numba G weight-MAC/s/core", "potential"]
BOUND_HEADER = ["workload", "batch", "N", "scales", "Numba ternary", "torch int8", "ORT int8", "ceiling",
                "ceiling / torch int8"]
LABELS = {NUMBA: "Numba ternary", FP32: "torch fp32", INT8: "torch int8", ORT: "ORT int8"}
SPEEDUP_COLUMNS = {FP32: "speedup_vs_fp32", INT8: "speedup_vs_int8", ORT: "speedup_vs_ort_int8"}
RATE = "gmac_per_s_per_core"  # G weight-MAC/s per thread of the measurement
NUMBA_RATE = f"{NUMBA}_{RATE}"


@dataclass(frozen=True)
class Target:
    """A ratio that must reach ``minimum`` on every workload the selection keeps (the worst counts)."""

    key: str  # metric name
    label: str
    kind: tuple[str, ...]
    batch: str  # "1", ">1" or another exact batch size
    baseline: str
    minimum: float
    workload: str | None = None  # the one workload it judges; None: every workload of its kinds
    shape: str | None = None  # only workloads whose shape contains this (e.g. "3x3")
    relaxed: tuple[tuple[int, str, float], ...] = ()  # (N, scales, minimum): where a lower bar applies

    def minimum_for(self, group_size: int, scales: str) -> float:
        return next((bar for n, dtype, bar in self.relaxed if (n, dtype) == (group_size, scales)), self.minimum)


TARGETS = (
    Target("gemv_vs_fp32", "batch-1 FC GEMV vs torch fp32", ("linear",), "1", FP32, 8.0),
    Target("gemv_vs_int8", "batch-1 FC GEMV vs torch int8 dynamic", ("linear",), "1", INT8, 1.0),
    Target("gemm_vs_fp32", "batched GEMM (FC and conv) vs torch fp32", ("linear", "conv"), ">1", FP32, 1.0),
    Target("network_b1_vs_fp32", "whole network, batch 1, vs torch fp32", ("network",), "1", FP32, 1.5),
    Target("resnet50_b1_vs_fp32", "whole torchvision ResNet-50, batch 1, vs torch fp32", (TORCHVISION,), "1", FP32,
           1.5, workload="torchvision_resnet50"),
    Target("network_b1_vs_ort_int8", "whole CIFAR ResNet, batch 1, vs ONNX Runtime int8", ("network",), "1", ORT,
           1.0),
    Target("network_b64_vs_ort_int8", "whole CIFAR ResNet, batch 64, vs ONNX Runtime int8", ("network",), "64", ORT,
           1.0),
    # fp32 scales at N=4 add a convert, a multiply and an add per group of 4 weights and row: a lower bar
    Target("conv3x3_b64_vs_int8", "3x3 convs, batch 64, vs torch int8", ("conv",), "64", INT8, 1.0, shape="3x3",
           relaxed=((4, "fp32", 0.8),)),
)


def weight_mac_rate(weight_macs, median_ms, threads):
    """G weight-MAC/s per thread: a rate to hold against the core's limits (memory bandwidth, SIMD
    width), which a speedup over another implementation cannot show. Scalars or pandas Series."""
    return weight_macs / (median_ms * 1e-3) / threads / 1e9


def timing_frame(rows: list[dict]) -> pd.DataFrame:
    """bench.csv: every timing, with the Numba path's speedup over it (this row's time / the
    Numba time of its cell) and its weight-MAC rate per core."""
    frame = pd.DataFrame(rows)
    frame["median_ms"] = pd.to_numeric(frame["median_ms"])
    numba = frame[frame["candidate"] == NUMBA].set_index(CELL_KEYS)["median_ms"].rename("numba_ms")
    numba_ms = frame.join(numba, on=CELL_KEYS)["numba_ms"]
    frame["numba_speedup"] = frame["median_ms"] / numba_ms
    frame[RATE] = weight_mac_rate(frame["weight_macs"], frame["median_ms"], frame["threads"])
    return frame


def speedup_frame(rows: list[dict]) -> pd.DataFrame:
    """One row per cell: every candidate's median, the ternary path's speedup over each of the
    others and its weight-MAC rate per core."""
    frame = pd.DataFrame(rows)
    index = CELL_KEYS + ["potential_speedup", "weight_macs"]
    medians = frame.pivot(index=index, columns="candidate", values="median_ms").reindex(columns=list(CANDIDATES))
    spread = frame.pivot(index=index, columns="candidate", values=["min_ms", "max_ms"])
    spread.columns = [f"{candidate}_{stat.removesuffix('_ms')}" for stat, candidate in spread.columns]
    medians = medians.join(spread).reset_index()
    medians.columns.name = None
    for baseline, column in SPEEDUP_COLUMNS.items():
        medians[column] = medians[baseline] / medians[NUMBA]
    medians[NUMBA_RATE] = weight_mac_rate(medians["weight_macs"], medians[NUMBA], medians["threads"])
    return medians.sort_values(["threads", "group_size", "kind", "workload", "batch", "scales"], kind="stable",
                               ignore_index=True)


def evaluate_targets(cells: pd.DataFrame, threads: int) -> list[dict]:
    """Each target per group size and scale precision at ``threads``: the worst ratio over the
    workloads it covers (narrower scales: batch-1 linear layers, conv layers and the CIFAR network)."""
    results = []
    for target in TARGETS:
        column = SPEEDUP_COLUMNS[target.baseline]
        chosen = cells[(cells["threads"] == threads) & cells["kind"].isin(target.kind)]
        chosen = chosen[chosen["batch"] > 1] if target.batch == ">1" else chosen[chosen["batch"] == int(target.batch)]
        if target.workload is not None:
            chosen = chosen[chosen["workload"] == target.workload]
        if target.shape is not None:
            chosen = chosen[chosen["shape"].str.contains(target.shape, regex=False)]
        for (group_size, scales), rows in chosen.groupby(["group_size", "scales"], sort=False):
            rows = rows.dropna(subset=[column])
            if rows.empty:
                continue
            worst, minimum = rows.loc[rows[column].idxmin()], target.minimum_for(int(group_size), scales)
            results.append({"key": target.key, "target": target.label, "group_size": int(group_size), "scales": scales,
                            "threads": threads, "required": minimum, "measured": float(worst[column]),
                            "worst_case": f"{worst['workload']} batch {int(worst['batch'])}",
                            "met": bool(worst[column] >= minimum)})
    return sorted(results, key=lambda result: result["scales"] != DEFAULT_SCALES)  # fp32 scales first


def summary_metrics(cells: pd.DataFrame, targets: list[dict], machine: Machine) -> dict:
    """The flat numbers metrics/bench.json and MLflow keep: every target's measured ratio."""
    metrics = {"compile_s": machine.compile_s, "cache_load_s": machine.cache_load_s,
               "background_cpus_before": machine.background_cpus_before,
               "background_cpus_after": machine.background_cpus_after, "idle": machine.idle}
    for result in targets:
        scales = "" if result["scales"] == DEFAULT_SCALES else f".{result['scales']}"
        metrics[f"{result['key']}.n{result['group_size']}.t{result['threads']}{scales}"] = round(result["measured"], 4)
    return metrics


def skip_notes(rows: list[dict]) -> list[str]:
    """Why a column says n/a: one line per candidate and reason, with the cells it covers."""
    skipped = Counter((row["candidate"], row["note"]) for row in rows if row["median_ms"] is None)
    return [f"- {LABELS[candidate]}: n/a in {count} cell{'s' if count > 1 else ''}: {note}"
            for (candidate, note), count in skipped.items()]


def bench_markdown(cells: pd.DataFrame, targets: list[dict], machine: Machine, skipped: list[str] = ()) -> str:
    idle = {True: "idle", False: "BUSY (timings inflated)", None: "idle state unknown"}[machine.idle]
    lines = [
        "# Measured speed of the integer path",
        "",
        (f"Machine: {machine.cpu}, {machine.cpus} CPUs, {idle}: other processes used "
         f"{_cpus(machine.background_cpus_before)} CPUs before and {_cpus(machine.background_cpus_after)} after "
         f"(limit {machine.max_background_cpus}). numba {machine.numba}, torch {machine.torch}."),
        (f"Numba ternary kernel: compile {machine.compile_s:.2f} s on first use, {machine.cache_load_s:.3f} s to "
         "load from its on-disk cache."),
        "",
        ("Every cell is the median of interleaved rounds (min-max in brackets), float32 in and out, input "
         "quantization included. Speedup = torch or ONNX Runtime (ORT) time / Numba ternary time at the same "
         "thread count; \"potential\" is the paper's cost model for the same N. \"scales\" is how the packed "
         "file stores the group scales: fp32 unless the row says fp16 or int8 (batch-1 linear layers, which "
         "read them as stored; those outputs differ from the fp32-scale ones by the scales' rounding)."),
        "",
        ("\"Numba G weight-MAC/s/core\" is the workload's multiply-accumulates with a weight (batch x the "
         "float layers' MACs) per second of the median time, per thread, to be read against physical limits: "
         "at batch 1 every weight is streamed once per call, so DRAM bandwidth sets a floor on the time; for "
         "reference, bitnet.cpp's I2_S GEMV reaches about 72 G weight-MAC/s on one Zen3 core with a "
         "cache-resident matrix. bench.csv has the rate of every candidate."),
        "",
        *([*skipped, ""] if skipped else []),
        "## Targets",
        "",
        markdown_table(TARGET_HEADER, [_target_cells(result) for result in targets],
                       text_columns=("target", "scales", "measured (worst case)", "met"), left="---"),
        *bounds_section(cells, machine.ceilings),
    ]
    for threads, rows in cells.groupby("threads"):
        lines += ["", f"## {threads} thread{'s' if threads > 1 else ''}", "",
                  markdown_table(CELL_HEADER, [_timing_cells(row) for _, row in rows.iterrows()],
                                 text_columns=("workload", "shape", "scales"), left="---")]
    return "\n".join(lines) + "\n"


def bounds_section(cells: pd.DataFrame, ceilings: dict[str, float]) -> list[str]:
    """The batched conv layers at the lowest thread count against the ceiling of their group structure
    (``ceilings.py``), in G weight-MAC/s per core; empty where no ceiling was measured."""
    threads = cells["threads"].min()
    rows = cells[(cells["threads"] == threads) & (cells["kind"] == "conv") & (cells["batch"] > 1)]
    if not ceilings or rows.empty:
        return []
    int8_ceiling = ceilings[INT8_WEIGHTS]
    measured = []
    for _, row in rows.iterrows():
        ceiling = ceilings.get(ceiling_label(int(row["group_size"]), row["scales"]))
        rates = {c: weight_mac_rate(row["weight_macs"], row[c], row["threads"]) for c in (NUMBA, INT8, ORT)}
        measured.append([str(row["workload"]), str(row["batch"]), str(row["group_size"]), str(row["scales"]),
                         *(_rate(rates[c]) for c in (NUMBA, INT8, ORT)), _rate(ceiling),
                         _ratio(ceiling / rates[INT8] if ceiling is not None else float("nan"))])
    return [
        "", "## What bounds the batched kernels", "",
        ("The batched kernel's own instructions with every operand in registers (no loads: `bench/ceilings.py`), "
         "timed on this core: the most a layer can reach, by how often its groups end. At each group's end every "
         "accumulator is converted to fp32, multiplied by its scale and added to the total (no fused "
         "multiply-add: the float order the fake-quant model and the torch twin share), on the vector units "
         "`vpdpbusd` runs on; an int8 layer, or ternary codes with int8 scales, has one group per filter. "
         "Where *ceiling / torch int8* is below a target, this arithmetic cannot meet it on this core."),
        "",
        markdown_table(["ceiling", "G MAC/s/core", "of the int8 ceiling"],
                       [[label, _rate(rate), f"{rate / int8_ceiling:.2f}x"] for label, rate in ceilings.items()],
                       text_columns=("ceiling",), left="---"),
        "",
        f"Batched conv layers, {threads} thread{'s' if threads > 1 else ''}, G weight-MAC/s/core:",
        "",
        markdown_table(BOUND_HEADER, measured, text_columns=("workload", "scales"), left="---"),
    ]


def _target_cells(result: dict) -> list[str]:
    return [result["target"], str(result["group_size"]), result["scales"], str(result["threads"]),
            f">= {result['required']:.1f}x", f"{result['measured']:.2f}x ({result['worst_case']})",
            "yes" if result["met"] else "no"]


def _timing_cells(row: pd.Series) -> list[str]:
    return [str(row["workload"]), str(row["shape"]), str(row["batch"]), str(row["group_size"]), str(row["scales"]),
            _ms(row, NUMBA), _ms(row, FP32), _ms(row, INT8), _ms(row, ORT),
            *(_ratio(row[column]) for column in SPEEDUP_COLUMNS.values()), _rate(row[NUMBA_RATE]),
            f"{row['potential_speedup']:.1f}x"]


def plot_speedups(cells: pd.DataFrame, path: Path, threads: int) -> Path:
    """Measured speedup over torch fp32 per cell next to the paper's potential, log scale."""
    rows = cells[cells["threads"] == threads].reset_index(drop=True)
    labels = [f"{r.workload}\nb{r.batch} N={r.group_size}" + ("" if r.scales == DEFAULT_SCALES else f" {r.scales}")
              for r in rows.itertuples()]
    figure = new_figure(figsize=(max(8.0, 0.45 * len(rows)), 5.0))
    axes = figure.add_subplot()
    positions = range(len(rows))
    axes.bar([p - 0.2 for p in positions], rows["speedup_vs_fp32"], width=0.4, label="measured vs torch fp32")
    axes.bar([p + 0.2 for p in positions], rows["potential_speedup"], width=0.4, color="lightgray",
             label="paper's potential (cost model)")
    axes.axhline(1.0, color="black", linewidth=0.8)
    axes.set_yscale("log")
    axes.set_xticks(list(positions), labels, rotation=90, fontsize=7)
    axes.set_ylabel("speedup over torch fp32 (x)")
    axes.set_title(f"Numba ternary path vs torch fp32, {threads} thread{'s' if threads > 1 else ''}")
    axes.legend()
    figure.tight_layout()
    return save_png(figure, path, PNG_DPI)


def write_bench_report(rows: list[dict], machine: Machine, out_dir: str | Path) -> tuple[dict, dict[str, Path]]:
    """bench.csv (every timing), bench.md (tables and targets), bench_speedup.png; returns the summary."""
    out_dir = Path(out_dir)
    cells = speedup_frame(rows)
    primary = min(cells["threads"])
    targets = [t for threads in sorted(cells["threads"].unique()) for t in evaluate_targets(cells, int(threads))]
    paths = {"csv": out_dir / "bench.csv", "markdown": out_dir / "bench.md", "plot": out_dir / "bench_speedup.png"}
    with atomic_path(paths["csv"]) as temp:
        timing_frame(rows).to_csv(temp, index=False, float_format="%.4f", lineterminator="\n")
    write_text_atomically(paths["markdown"], bench_markdown(cells, targets, machine, skip_notes(rows)))
    plot_speedups(cells, paths["plot"], int(primary))
    return summary_metrics(cells, [t for t in targets if t["threads"] == primary], machine), paths


def _ms(row: pd.Series, candidate: str) -> str:
    if pd.isna(row[candidate]):
        return "n/a"
    return f"{row[candidate]:.3f} ({row[candidate + '_min']:.3f}-{row[candidate + '_max']:.3f})"


def _ratio(value: float) -> str:
    return "n/a" if pd.isna(value) else f"{value:.2f}x"


def _rate(value: float) -> str:
    return "n/a" if pd.isna(value) else f"{value:.2f}"


def _cpus(load: float | None) -> str:
    return "unknown" if load is None else f"{load:.2f}"
