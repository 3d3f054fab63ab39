"""Top-1 against bits per weight: ternary FGQ beside uniform low-bit weights at equal storage.

Bits per weight count everything a weight costs in storage, codes and scales (and zero points, and
int8 scales' per-filter multipliers), over the whole network. Each format (weights, scale storage,
group size) is represented by its best post-training row at an activation width; a point is on the
Pareto front when no other point reaches at least its top-1 with at most its bits.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ..render import markdown_table, new_figure, save_png
from .frame import SCALE_DTYPE_ORDER
from .labels import act_bits_label, fp32_top1_percent, group_row_label, percent

FRONTIER_ACT_BITS = (8, 4)
FORMAT_KEYS = ["weight_format", "scale_dtype", "group_size"]
HEADER = ["weights", "scales", "group", "bits/weight", "top-1", "mult. eliminated", "on the front"]
PNG_DPI = 120
MARKERS = {"ternary": "o", "int2": "v", "int3": "s", "int4": "D"}


def frontier_points(frame: pd.DataFrame, act_bits: int) -> pd.DataFrame:
    """The best post-training row of each format at ``act_bits``, by bits, with ``on_front`` marked."""
    rows = frame[~frame["finetuned"].astype(bool) & (frame["act_bits"] == act_bits)]
    if rows.empty:
        return rows.assign(on_front=pd.Series(dtype=bool))
    best = rows.loc[rows.groupby(FORMAT_KEYS, sort=False)["top1"].idxmax()]
    best = best.sort_values(["bits_per_weight", "top1"], ascending=[True, False], kind="stable")
    best_so_far = best["top1"].cummax().shift(fill_value=-1.0)
    return best.assign(on_front=best["top1"] > best_so_far)


def _format_label(point: pd.Series) -> str:
    scales = "" if point["scale_dtype"] == "fp32" else f" {point['scale_dtype']} scales"
    return f"{point['weight_format']}{scales}"


def frontier_sentence(points: pd.DataFrame, act_bits: int) -> str:
    """Where ternary FGQ stands on the front at one activation width, in one sentence."""
    ternary = points[points["weight_format"] == "ternary"]
    uniform = points[points["weight_format"] != "ternary"]
    width = act_bits_label(act_bits)
    if ternary.empty:
        return f"At {width} no ternary row was run."
    on_front = ternary[ternary["on_front"]]
    if uniform.empty:
        return (f"At {width} no uniform baseline was run, so the front compares ternary formats only: "
                f"{len(on_front)} of {len(ternary)} are on it.")
    if on_front.empty:
        best = ternary.loc[ternary["top1"].idxmax()]
        rival = uniform[(uniform["bits_per_weight"] <= best["bits_per_weight"]) & (uniform["top1"] >= best["top1"])]
        rival = rival.sort_values("bits_per_weight").iloc[0] if not rival.empty else points[points["on_front"]].iloc[0]
        return (f"At {width} ternary FGQ is off the Pareto front: its best point ({_point_text(best)}) is "
                f"dominated by {_format_label(rival)} at {group_row_label(rival['group_size'])} "
                f"({_point_text(rival)}).")
    front_uniform = points[points["on_front"] & (points["weight_format"] != "ternary")]
    spans = ", ".join(f"{_format_label(p)} {group_row_label(p['group_size'])} ({_point_text(p)})"
                      for _, p in on_front.iterrows())
    others = (f"; uniform points on the front: {len(front_uniform)}" if not front_uniform.empty
              else "; no uniform point is on it")
    return f"At {width} ternary FGQ is on the Pareto front at {spans}{others}."


def _point_text(point: pd.Series) -> str:
    return f"{point['bits_per_weight']:.2f} bits/weight, {percent(point['top1'])}%"


def frontier_markdown(frame: pd.DataFrame) -> str:
    """A table per activation width of every format's best point, by bits, and where FGQ stands."""
    intro = ("Every format's best post-training row (weights, scale storage, group size), by bits per weight "
             "counted over the whole network: codes, scales, uniform zero points, and the fp32 per-filter "
             "multiplier of int8 scales. *On the front*: no other point reaches at least its top-1 with at most "
             "its bits.")
    sections = ["## Top-1 against bits per weight", "", intro, ""]
    for act_bits in FRONTIER_ACT_BITS:
        points = frontier_points(frame, act_bits)
        if points.empty:
            continue
        rows = [[p["weight_format"], p["scale_dtype"], group_row_label(p["group_size"]),
                 f"{p['bits_per_weight']:.2f}", percent(p["top1"]), percent(p["mult_eliminated"]),
                 "yes" if p["on_front"] else ""] for _, p in points.iterrows()]
        sections += [f"### {act_bits_label(act_bits)}", "", frontier_sentence(points, act_bits), "",
                     markdown_table(HEADER, rows, text_columns=HEADER[:3] + HEADER[-1:]), ""]
    sections += ["![Top-1 against bits per weight](top1_vs_bits_per_weight.png)", ""]
    return "\n".join(sections)


def plot_top1_vs_bits(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """One panel per activation width: every format's best point, the front as a step line."""
    widths = [bits for bits in FRONTIER_ACT_BITS if not frontier_points(frame, bits).empty]
    figure = new_figure(figsize=(6.4 * max(len(widths), 1), 4.8), layout="constrained")
    for axes, act_bits in zip(figure.subplots(1, max(len(widths), 1), squeeze=False).ravel(), widths):
        points = frontier_points(frame, act_bits)
        for (weight_format, scale_dtype), series in points.groupby(["weight_format", "scale_dtype"], sort=False):
            color = f"C{SCALE_DTYPE_ORDER.index(scale_dtype)}" if weight_format == "ternary" else None
            axes.plot(series["bits_per_weight"], 100 * series["top1"], linestyle="none",
                      marker=MARKERS.get(weight_format, "x"), color=color,
                      label=f"{weight_format}, {scale_dtype} scales")
            for _, point in series.iterrows():
                axes.annotate(str(point["group_size"]), (point["bits_per_weight"], 100 * point["top1"]),
                              fontsize=6, xytext=(3, 3), textcoords="offset points")
        front = points[points["on_front"]]
        axes.step(front["bits_per_weight"], 100 * front["top1"], where="post", color="black", linewidth=0.8,
                  label="Pareto front")
        fp32 = fp32_top1_percent(points, f"the frontier at {act_bits_label(act_bits)}")
        axes.axhline(fp32, color="black", linestyle="--", linewidth=1.0, label=f"FP32 ({fp32:.2f}%)")
        axes.set_xscale("log", base=2)
        axes.set_xlabel("bits per weight, whole network (log2 scale; labels: group size)")
        axes.set_ylabel("top-1 (%)")
        axes.set_title(f"post-training, {act_bits_label(act_bits)}", fontsize=9)
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=7, loc="lower right")
    return save_png(figure, path, PNG_DPI)
