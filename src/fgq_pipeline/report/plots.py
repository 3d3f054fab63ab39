"""The two figures of the report: top-1 against group size and against multiplications saved."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from matplotlib.axes import Axes

from ..render import new_figure, save_png
from .frame import NAMED_GROUP_SIZES, group_rank, parse_group_size
from .labels import (
    act_bits_descending,
    act_bits_label,
    fp32_top1_percent,
    group_row_label,
    group_tick_label,
    key_text,
    model_label,
    sorted_by_group,
    variant_phrases,
)
from .panels import Panel, choose_panels, row_panel_key

PNG_DPI = 120


def _act_bits_colors(frame: pd.DataFrame) -> dict[int, str]:
    """Fixed colour per activation width so panels and plots can be compared at a glance."""
    return {bits: f"C{index}" for index, bits in enumerate(act_bits_descending(frame))}


def _panel_title(key: tuple) -> str:
    phrases = variant_phrases(tuple(key[2:]), quote="")
    half = (len(phrases) + 1) // 2
    return f"{model_label(key[:2])}\n{', '.join(phrases[:half])}\n{', '.join(phrases[half:])}"


def _draw_fp32_line(axes: Axes, panel: Panel) -> None:
    fp32 = fp32_top1_percent(panel.rows, f"panel {key_text(panel.key)}")
    axes.axhline(fp32, color="black", linestyle="--", linewidth=1.0, label=f"FP32 ({fp32:.2f}%)")


def _render_panels(
    panels: list[Panel],
    notes: list[str],
    path: Path,
    title: str,
    draw_panel: Callable[[Axes, Panel], None],
) -> Path:
    """Lay the chosen panels out two per row and save the figure atomically."""
    columns = 1 if len(panels) == 1 else 2
    rows = math.ceil(len(panels) / columns)
    figure = new_figure(figsize=(6.4 * columns, 4.8 * rows), layout="constrained")
    all_axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for axes, panel in zip(all_axes, panels):
        draw_panel(axes, panel)
        axes.set_title(_panel_title(panel.key), fontsize=9)
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=8, loc="best")
    for unused_axes in all_axes[len(panels):]:
        unused_axes.set_visible(False)
    figure.suptitle("\n".join([title, *(f"({note})" for note in notes)]))
    return save_png(figure, path, PNG_DPI)


def _group_x_positions(frame: pd.DataFrame) -> dict[str, float]:
    """log2(N) for integer sizes; 'filter' and 'layer' as extra slots right of the largest N."""
    sizes = sorted({parse_group_size(value) for value in frame["group_size"]}, key=group_rank)
    integers = [size for size in sizes if isinstance(size, int)]
    positions = {str(size): math.log2(size) for size in integers}
    next_slot = math.log2(max(integers)) + 1 if integers else 0.0
    for name in (size for size in sizes if isinstance(size, str)):
        positions[name] = next_slot
        next_slot += 1
    return positions


def _post_training(panel: Panel) -> pd.DataFrame:
    return panel.rows[~panel.rows["finetuned"].astype(bool)]


def _draw_top1_vs_group_size(
    axes: Axes, panel: Panel, positions: dict[str, float], colors: dict[int, str]
) -> None:
    rows = _post_training(panel)
    for act_bits in act_bits_descending(rows):
        series = sorted_by_group(rows[rows["act_bits"] == act_bits])
        is_named = series["group_size"].isin(NAMED_GROUP_SIZES)
        color = colors[act_bits]
        label = act_bits_label(act_bits)
        # Named sizes are not on the log2 scale, so they get markers but no connecting line.
        for part, style in ((series[~is_named], "-"), (series[is_named], "none")):
            if part.empty:
                continue
            x = [positions[str(size)] for size in part["group_size"]]
            y = 100.0 * part["top1"]
            axes.plot(x, y, linestyle=style, marker="o", color=color, label=label)
            label = None
    _draw_fp32_line(axes, panel)
    ticks = sorted(positions.items(), key=lambda item: item[1])
    axes.set_xticks([x for _, x in ticks], [group_tick_label(size) for size, _ in ticks])
    named_positions = [x for size, x in ticks if size in NAMED_GROUP_SIZES]
    if named_positions and len(named_positions) < len(ticks):
        axes.axvline(min(named_positions) - 0.5, color="grey", linestyle=":", linewidth=1.0)
    axes.set_xlabel("group size N (log2 scale; whole filter / layer on the right)")
    axes.set_ylabel("top-1 (%)")


def plot_top1_vs_group_size(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Top-1 against group size for post-training rows, one line per activation width."""
    panels, notes = choose_panels(frame)
    positions = _group_x_positions(pd.concat([_post_training(panel) for panel in panels]))
    colors = _act_bits_colors(frame)
    return _render_panels(
        panels,
        notes,
        Path(path),
        "Top-1 vs weight group size (post-training quantization)",
        lambda axes, panel: _draw_top1_vs_group_size(axes, panel, positions, colors),
    )


def _annotate_point(axes: Axes, x: float, y: float, text: str, below: bool = False) -> None:
    offset = (6, -12) if below else (4, 4)
    axes.annotate(text, (x, y), textcoords="offset points", xytext=offset, fontsize=7)


def _annotate_group_sizes(axes: Axes, rows: pd.DataFrame) -> None:
    """Label each group size once, at its highest point, to keep the scatter legible."""
    for group_size, group_rows in sorted_by_group(rows).groupby("group_size", sort=False):
        top = group_rows.loc[group_rows["top1"].idxmax()]
        x, y = 100.0 * top["mult_eliminated"], 100.0 * top["top1"]
        _annotate_point(axes, x, y, group_row_label(group_size))


def _finetuned_label(row: pd.Series, panel: Panel) -> str:
    """Say so when a fine-tuned point sits on a panel of another variant than its own."""
    own_variant = row_panel_key(row) == panel.key
    return f"{group_row_label(row['group_size'])} (ft{'' if own_variant else ', other variant'})"


def _draw_top1_vs_mult_eliminated(axes: Axes, panel: Panel, colors: dict[int, str]) -> None:
    finetuned = panel.rows["finetuned"].astype(bool)
    post_training, tuned = panel.rows[~finetuned], panel.rows[finetuned]
    for act_bits in act_bits_descending(panel.rows):
        label, color = act_bits_label(act_bits), colors[act_bits]
        series = sorted_by_group(post_training[post_training["act_bits"] == act_bits])
        if not series.empty:
            x, y = 100.0 * series["mult_eliminated"], 100.0 * series["top1"]
            axes.plot(x, y, marker="o", color=color, label=label)
        stars = tuned[tuned["act_bits"] == act_bits]
        if not stars.empty:
            axes.scatter(
                100.0 * stars["mult_eliminated"],
                100.0 * stars["top1"],
                marker="*",
                s=160,
                color=color,
                edgecolors="black",
                linewidths=0.6,
                zorder=3,
                label=f"{label} fine-tuned",
            )
    _annotate_group_sizes(axes, post_training)
    for _, row in tuned.iterrows():
        x, y = 100.0 * row["mult_eliminated"], 100.0 * row["top1"]
        _annotate_point(axes, x, y, _finetuned_label(row, panel), below=True)
    _draw_fp32_line(axes, panel)
    axes.set_xlabel("multiplications eliminated (%)")
    axes.set_ylabel("top-1 (%)")


def plot_top1_vs_mult_eliminated(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Accuracy against the compute it saves; fine-tuned stars show what training recovers."""
    panels, notes = choose_panels(frame)
    colors = _act_bits_colors(frame)
    return _render_panels(
        panels,
        notes,
        Path(path),
        "Top-1 vs multiplications eliminated",
        lambda axes, panel: _draw_top1_vs_mult_eliminated(axes, panel, colors),
    )
