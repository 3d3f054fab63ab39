"""Turn PTQ and fine-tune result records into the tables and plots a reader finds in ``reports/``.

The outputs are committed, so they must be readable without running anything and must not change
unless the records do: rows are sorted deterministically, floats are written with a fixed format
and PNGs carry no software-version metadata. Every file is written atomically so a failed run never
leaves a half-written report behind.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .atomic import atomic_path

RESULT_COLUMNS = [
    "model",
    "dataset",
    "group_size",
    "act_bits",
    "solver",
    "rounding",
    "act_calibration",
    "policy",
    "bn_reestimate",
    "bias_correction",
    "finetuned",
    "top1",
    "top5",
    "fp32_top1",
    "mult_eliminated",
    "bits_per_weight",
    "potential_speedup",
]
NAMED_GROUP_SIZES = ("filter", "layer")
FLOAT_ACTIVATION_BITS = 32
ALLOWED_ACT_BITS = (*range(2, 9), FLOAT_ACTIVATION_BITS)
BOOLEAN_COLUMNS = ("bn_reestimate", "bias_correction", "finetuned")
TEXT_COLUMNS = ("model", "dataset", "solver", "rounding", "act_calibration", "policy")
MODEL_KEYS = ["model", "dataset"]
VARIANT_KEYS = [
    "solver",
    "rounding",
    "act_calibration",
    "policy",
    "bn_reestimate",
    "bias_correction",
]
PANEL_KEYS = [*MODEL_KEYS, *VARIANT_KEYS]
BLOCK_KEYS = [*PANEL_KEYS, "finetuned"]
EXTRA_TRAINING_COLUMN = "extra_training_fraction"
HEADLINE_GROUP_SIZE = 4
HEADLINE_ACT_BITS = (8, 4)
MAX_PANELS = 4
CSV_FLOAT_FORMAT = "%.6f"
PNG_DPI = 120
MISSING_CELL = "—"
EFFECTIVE_GROUP_NOTE = (
    "For layers with fewer input channels than N the effective group is the channel count: "
    "a group never crosses filters or kernel positions."
)
REPORT_FILE_NAMES = (
    "results.csv",
    "results.md",
    "top1_vs_group_size.png",
    "top1_vs_mult_eliminated.png",
)


# --------------------------------------------------------------------------------------------
# Validation and ordering
# --------------------------------------------------------------------------------------------


def _is_integer(value: object) -> bool:
    """True for ints (numpy included) but not bools, which Python counts as ints."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_boolean(value: object) -> bool:
    return isinstance(value, (bool, np.bool_))


def _parse_group_size(value: object) -> int | str:
    """Group size as int or 'filter'/'layer', accepting the text form the frame and CSV use."""
    if isinstance(value, str) and value in NAMED_GROUP_SIZES:
        return value
    if isinstance(value, str) and value.isdigit() and int(value) >= 1:
        return int(value)
    if _is_integer(value) and int(value) >= 1:
        return int(value)
    raise ValueError(f"group_size must be a positive integer, 'filter' or 'layer', got {value!r}")


def _group_rank(value: object) -> tuple[int, int]:
    """Sort key putting integer group sizes in numeric order, then 'filter', then 'layer'."""
    group_size = _parse_group_size(value)
    if isinstance(group_size, int):
        return (0, group_size)
    return (1 + NAMED_GROUP_SIZES.index(group_size), 0)


def _validate_record(index: int, record: object) -> None:
    """Reject records the tables cannot place, naming the record and the offending value."""
    if not isinstance(record, dict):
        raise ValueError(f"record {index} must be a dict, got {type(record).__name__}")
    for key in RESULT_COLUMNS:
        if key not in record:
            raise ValueError(f"record {index} is missing required key {key!r}")
    try:
        _parse_group_size(record["group_size"])
    except ValueError as error:
        raise ValueError(f"record {index}: {error}") from None
    act_bits = record["act_bits"]
    if not _is_integer(act_bits) or int(act_bits) not in ALLOWED_ACT_BITS:
        raise ValueError(
            f"record {index}: act_bits must be one of {ALLOWED_ACT_BITS}, got {act_bits!r}"
        )
    for key in BOOLEAN_COLUMNS:
        if not _is_boolean(record[key]):
            raise ValueError(f"record {index}: {key} must be a bool, got {record[key]!r}")
    for key in TEXT_COLUMNS:
        if not isinstance(record[key], str) or not record[key]:
            raise ValueError(
                f"record {index}: {key} must be a non-empty string, got {record[key]!r}"
            )


def _record_sort_key(record: dict) -> tuple:
    """Order of rows in every output: configuration first, then 32/8/4-bit, then group size."""
    return (
        record["model"],
        record["dataset"],
        bool(record["finetuned"]),
        record["solver"],
        record["rounding"],
        record["act_calibration"],
        record["policy"],
        bool(record["bn_reestimate"]),
        bool(record["bias_correction"]),
        -int(record["act_bits"]),
        _group_rank(record["group_size"]),
    )


def _extra_columns(records: Sequence[dict]) -> list[str]:
    """Keys beyond RESULT_COLUMNS in first-seen order, so optional fields survive into the CSV."""
    seen: dict[str, None] = {}
    for record in records:
        for key in record:
            if key not in RESULT_COLUMNS:
                seen.setdefault(key, None)
    return list(seen)


def _is_integer_column(records: Sequence[dict], column: str) -> bool:
    present = [record[column] for record in records if column in record]
    return bool(present) and all(_is_integer(value) for value in present)


def results_frame(records: list[dict]) -> pd.DataFrame:
    """One row per record, required columns first, sorted so reports are stable across runs.

    ``group_size`` becomes text ("4", "filter") because a column mixing ints and strings cannot
    round-trip through CSV. Integer-valued extra columns stay integers (with empty cells where a
    record lacks them) instead of turning into floats.
    """
    for index, record in enumerate(records):
        _validate_record(index, record)
    ordered = sorted(records, key=_record_sort_key)
    extras = _extra_columns(ordered)
    rows = [
        {**record, "group_size": str(_parse_group_size(record["group_size"]))}
        for record in ordered
    ]
    frame = pd.DataFrame.from_records(rows, columns=[*RESULT_COLUMNS, *extras])
    frame["act_bits"] = frame["act_bits"].astype("int64")
    for column in BOOLEAN_COLUMNS:
        frame[column] = frame[column].astype(bool)
    for column in extras:
        if _is_integer_column(ordered, column):
            frame[column] = frame[column].astype("Int64")
    return frame


# --------------------------------------------------------------------------------------------
# Atomic file writing
# --------------------------------------------------------------------------------------------


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    with atomic_path(path) as temp:
        write(temp)


def _write_text_atomically(path: Path, text: str) -> None:
    _write_atomically(path, lambda temp: temp.write_text(text, encoding="utf-8", newline="\n"))


def write_results_csv(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """CSV with fixed float formatting and line endings, so equal inputs give equal bytes."""
    target = Path(path)
    _write_atomically(
        target,
        lambda temp: frame.to_csv(
            temp, index=False, float_format=CSV_FLOAT_FORMAT, lineterminator="\n"
        ),
    )
    return target


# --------------------------------------------------------------------------------------------
# Labels and formatting shared by tables and plots
# --------------------------------------------------------------------------------------------


def _group_row_label(value: object) -> str:
    group_size = _parse_group_size(value)
    if isinstance(group_size, int):
        return f"N={group_size}"
    return f"per-{group_size}"


def _group_tick_label(value: object) -> str:
    return str(_parse_group_size(value))


def _act_bits_label(act_bits: int) -> str:
    if act_bits == FLOAT_ACTIVATION_BITS:
        return f"A{act_bits} (float)"
    return f"A{act_bits}"


def _act_bits_descending(rows: pd.DataFrame) -> list[int]:
    return sorted({int(bits) for bits in rows["act_bits"]}, reverse=True)


def _sorted_by_group(rows: pd.DataFrame) -> pd.DataFrame:
    return rows.sort_values("group_size", key=lambda column: column.map(_group_rank), kind="stable")


def _percent(fraction: float) -> str:
    return f"{100.0 * float(fraction):.2f}"


def _fp32_top1_percent(rows: pd.DataFrame, context: str) -> float:
    """The one FP32 reference of ``rows``; several values mean records from different baselines."""
    values = sorted({round(float(value), 6) for value in rows["fp32_top1"]})
    if len(values) != 1:
        raise ValueError(f"expected one fp32_top1 for {context}, got {values}")
    return 100.0 * values[0]


def _on_off(flag: bool) -> str:
    return "on" if flag else "off"


def _key_text(key: tuple) -> str:
    """A group key as plain text for error messages (numpy bools print as True/False)."""
    return ", ".join(map(str, key))


def _model_label(model_key: tuple) -> str:
    model, dataset = model_key
    return f"{model} on {dataset}"


def _variant_of(row: pd.Series) -> tuple:
    return tuple(row[key] for key in VARIANT_KEYS)


def _variant_phrases(variant: tuple, quote: str = "`") -> list[str]:
    """The variant as readable phrases; ``quote`` marks the free-text values (code in markdown)."""
    solver, rounding, act_calibration, policy, bn_reestimate, bias_correction = variant
    return [
        f"solver {quote}{solver}{quote}",
        f"rounding {quote}{rounding}{quote}",
        f"act. calibration {quote}{act_calibration}{quote}",
        f"policy {quote}{policy}{quote}",
        f"BN re-estimation {_on_off(bn_reestimate)}",
        f"bias correction {_on_off(bias_correction)}",
    ]


def _variant_text(variant: tuple) -> str:
    return ", ".join(_variant_phrases(variant))


def _extra_training_phrase(rows: pd.DataFrame) -> str:
    """What fine-tuning cost, as a share of the FP32 baseline's training; empty when unrecorded."""
    if EXTRA_TRAINING_COLUMN not in rows:
        return ""
    fractions = sorted({round(float(value), 6) for value in rows[EXTRA_TRAINING_COLUMN].dropna()})
    if not fractions:
        return ""
    shares = " / ".join(f"{100.0 * fraction:.1f}%" for fraction in fractions)
    return f"extra training: {shares} of the baseline's"


# --------------------------------------------------------------------------------------------
# Markdown tables
# --------------------------------------------------------------------------------------------


def _table_header(header: list[str], text_columns: int) -> list[str]:
    """Header and alignment rows: text columns left, numbers right."""
    alignment = [":---"] * text_columns + ["---:"] * (len(header) - text_columns)
    return ["| " + " | ".join(header) + " |", "|" + "|".join(alignment) + "|"]


def _table_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _top1_headers(act_bits_columns: list[int]) -> list[str]:
    return [f"top-1 {_act_bits_label(bits)}" for bits in act_bits_columns]


def _block_heading(key: tuple, rows: pd.DataFrame) -> str:
    model, dataset, *variant, finetuned = key
    stage = "post-training"
    if finetuned:
        extra_training = _extra_training_phrase(rows)
        stage = f"fine-tuned ({extra_training})" if extra_training else "fine-tuned"
    return f"### {_model_label((model, dataset))}: {_variant_text(tuple(variant))}, {stage}"


def _cost_cell(rows: pd.DataFrame, column: str, formatter: Callable[[float], str]) -> str:
    """One value when it does not depend on act_bits, else each value labelled with its act_bits."""
    by_bits = [(int(row.act_bits), formatter(getattr(row, column))) for row in rows.itertuples()]
    distinct = {text for _, text in by_bits}
    if len(distinct) == 1:
        return distinct.pop()
    return " / ".join(f"{text} ({_act_bits_label(bits)})" for bits, text in by_bits)


def _top1_cell(rows: pd.DataFrame, act_bits: int, context: str) -> str:
    matching = rows[rows["act_bits"] == act_bits]
    if len(matching) > 1:
        raise ValueError(
            f"{len(matching)} results for {context}, {_act_bits_label(act_bits)}; "
            "one table cell can show only one"
        )
    if matching.empty:
        return MISSING_CELL
    return _percent(matching["top1"].iloc[0])


def _group_table_row(
    group_size: str, rows: pd.DataFrame, act_bits_columns: list[int], block: str
) -> str:
    rows = rows.sort_values("act_bits", ascending=False, kind="stable")
    context = f"{_group_row_label(group_size)} in block '{block}'"
    return _table_row(
        [
            _group_row_label(group_size),
            _cost_cell(rows, "mult_eliminated", lambda value: f"{_percent(value)}%"),
            _cost_cell(rows, "bits_per_weight", lambda value: f"{float(value):.2f}"),
            _cost_cell(rows, "potential_speedup", lambda value: f"{float(value):.2f}x"),
            *(_top1_cell(rows, bits, context) for bits in act_bits_columns),
        ]
    )


def _block_markdown(key: tuple, rows: pd.DataFrame) -> str:
    heading = _block_heading(key, rows)
    block = _key_text(key)
    act_bits_columns = _act_bits_descending(rows)
    header = ["group", "mult. eliminated", "bits/weight", "potential speedup"]
    lines = [
        heading,
        "",
        f"FP32 top-1: {_fp32_top1_percent(rows, f'block {block}'):.2f}%",
        "",
        *_table_header([*header, *_top1_headers(act_bits_columns)], text_columns=1),
    ]
    ordered = _sorted_by_group(rows)
    for group_size, group_rows in ordered.groupby("group_size", sort=False):
        lines.append(_group_table_row(str(group_size), group_rows, act_bits_columns, block))
    return "\n".join(lines)


def _ladder_act_bits(act_bits_columns: list[int]) -> int:
    """The widest quantized activation width: where repairs are compared without A4's noise."""
    quantized = [bits for bits in act_bits_columns if bits != FLOAT_ACTIVATION_BITS]
    return max(quantized, default=FLOAT_ACTIVATION_BITS)


def _ablation_ladder(rows: pd.DataFrame, ladder_bits: int) -> list[tuple[tuple, pd.DataFrame]]:
    """Variants weakest first at ``ladder_bits``; those not run at that width go last."""

    def rung(item: tuple[tuple, pd.DataFrame]) -> tuple[bool, float]:
        top1 = item[1].loc[item[1]["act_bits"] == ladder_bits, "top1"]
        return (top1.empty, float(top1.max()) if not top1.empty else 0.0)

    # groupby sorts the variants, and sorted() is stable, so equal accuracies keep that order.
    return sorted(rows.groupby(VARIANT_KEYS, sort=True), key=rung)


def _ablation_markdown(model_key: tuple, group_size: str, rows: pd.DataFrame) -> str:
    """Every variant run at one group size side by side, so each repair's gain can be read off."""
    where = f"{_group_row_label(group_size)} of {_model_label(model_key)}"
    act_bits_columns = _act_bits_descending(rows)
    ladder_bits = _ladder_act_bits(act_bits_columns)
    header = ["solver", "rounding", "act. calibration", "policy", "BN re-est.", "bias corr."]
    lines = [
        f"### {_model_label(model_key)}: ablation at {_group_row_label(group_size)}",
        "",
        f"FP32 top-1: {_fp32_top1_percent(rows, f'the ablation at {where}'):.2f}%",
        "",
        f"One row per post-training variant run at {_group_row_label(group_size)}, sorted by "
        f"top-1 {_act_bits_label(ladder_bits)} from lowest to highest.",
        "",
        *_table_header([*header, *_top1_headers(act_bits_columns)], text_columns=len(header)),
    ]
    for variant, variant_rows in _ablation_ladder(rows, ladder_bits):
        solver, rounding, act_calibration, policy, bn_reestimate, bias_correction = variant
        context = f"{_group_row_label(group_size)}, {_variant_text(variant)} in the ablation"
        cells = [solver, rounding, act_calibration, policy]
        cells += [_on_off(bn_reestimate), _on_off(bias_correction)]
        cells += [_top1_cell(variant_rows, bits, context) for bits in act_bits_columns]
        lines.append(_table_row(cells))
    return "\n".join(lines)


def _model_markdown(model_key: tuple, rows: pd.DataFrame) -> list[str]:
    """Full-grid blocks, then ablation tables for one-group-size variants, then fine-tuning."""
    post_training = rows[~rows["finetuned"].astype(bool)]
    full_grid_blocks, ablation_sizes = [], set()
    for key, block_rows in post_training.groupby(BLOCK_KEYS, sort=False):
        group_sizes = block_rows["group_size"].unique()
        if len(group_sizes) == 1:
            ablation_sizes.add(str(group_sizes[0]))
        else:
            full_grid_blocks.append(_block_markdown(key, block_rows))
    ablations = [
        _ablation_markdown(model_key, size, post_training[post_training["group_size"] == size])
        for size in sorted(ablation_sizes, key=_group_rank)
    ]
    finetuned = rows[rows["finetuned"].astype(bool)]
    finetuned_blocks = [
        _block_markdown(key, block_rows)
        for key, block_rows in finetuned.groupby(BLOCK_KEYS, sort=False)
    ]
    return [*full_grid_blocks, *ablations, *finetuned_blocks]


def paper_table_markdown(frame: pd.DataFrame) -> str:
    """Paper-style tables: one per full-grid variant, one ablation table per shared group size.

    Top-1 columns are per activation width so a row reads like the paper's: the cost of a group
    size next to the accuracy it buys at each precision. Variants run at a single group size would
    be one-row tables, so they are gathered into an ablation table next to the full-grid variants'
    rows at that size.
    """
    sections = [
        "Top-1 accuracies are in %. N is the number of input channels sharing one ternary scale; "
        "per-filter and per-layer use one scale per whole filter or layer.",
        EFFECTIVE_GROUP_NOTE,
    ]
    for model_key, rows in frame.groupby(MODEL_KEYS, sort=False):
        sections.extend(_model_markdown(model_key, rows))
    return "\n\n".join(sections) + "\n"


# --------------------------------------------------------------------------------------------
# Headline
# --------------------------------------------------------------------------------------------


def _best_post_training_item(rows: pd.DataFrame, act_bits: int) -> str:
    group_label = _group_row_label(HEADLINE_GROUP_SIZE)
    label = f"Best post-training top-1, {group_label}, {_act_bits_label(act_bits)}"
    candidates = rows[
        ~rows["finetuned"].astype(bool)
        & (rows["group_size"] == str(HEADLINE_GROUP_SIZE))
        & (rows["act_bits"] == act_bits)
    ]
    if candidates.empty:
        return f"- {label}: not measured"
    best = candidates.loc[candidates["top1"].idxmax()]
    return f"- {label}: {_percent(best['top1'])}% ({_variant_text(_variant_of(best))})"


def _finetuned_items(rows: pd.DataFrame) -> list[str]:
    finetuned = rows[rows["finetuned"].astype(bool)]
    items = []
    for label in finetuned.index:
        row = finetuned.loc[[label]]
        group_size, act_bits = row["group_size"].iloc[0], int(row["act_bits"].iloc[0])
        item = (
            f"- Fine-tuned top-1, {_group_row_label(group_size)}, {_act_bits_label(act_bits)}: "
            f"{_percent(row['top1'].iloc[0])}%"
        )
        extra_training = _extra_training_phrase(row)
        items.append(f"{item} ({extra_training})" if extra_training else item)
    return items


def headline_markdown(frame: pd.DataFrame) -> str:
    """The numbers a reader comes for, per model, so they need not be dug out of the tables."""
    lines = ["## Headline", ""]
    for model_key, rows in frame.groupby(MODEL_KEYS, sort=False):
        fp32 = _fp32_top1_percent(rows, _model_label(model_key))
        lines += [f"**{_model_label(model_key)}**", "", f"- FP32 top-1: {fp32:.2f}%"]
        lines += [_best_post_training_item(rows, bits) for bits in HEADLINE_ACT_BITS]
        lines += [*_finetuned_items(rows), ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Panel:
    """One plotted variant of one model: its post-training rows plus fine-tuned rows put on it."""

    key: tuple
    rows: pd.DataFrame
    mean_top1: float


def _row_panel_key(row: pd.Series) -> tuple:
    return tuple(row[key] for key in PANEL_KEYS)


def _full_grid_panels(frame: pd.DataFrame) -> list[Panel]:
    """A panel per post-training variant run at several group sizes; a single point is no curve."""
    post_training = frame[~frame["finetuned"].astype(bool)]
    return [
        Panel(key, rows, float(rows["top1"].mean()))
        for key, rows in post_training.groupby(PANEL_KEYS, sort=True)
        if rows["group_size"].nunique() > 1
    ]


def _finetuned_home(row_key: tuple, panels: list[Panel]) -> Panel | None:
    """The panel of the fine-tuned row's own variant if shown, else its model's best panel."""
    model_panels = [panel for panel in panels if panel.key[:2] == row_key[:2]]
    same_variant = [panel for panel in model_panels if panel.key == row_key]
    if same_variant:
        return same_variant[0]
    return max(model_panels, key=lambda panel: panel.mean_top1, default=None)


def _with_finetuned(panels: list[Panel], frame: pd.DataFrame) -> list[Panel]:
    finetuned = frame[frame["finetuned"].astype(bool)]
    homes = {
        label: _finetuned_home(_row_panel_key(row), panels) for label, row in finetuned.iterrows()
    }
    placed = []
    for panel in panels:
        labels = [*panel.rows.index, *(label for label, home in homes.items() if home is panel)]
        placed.append(Panel(panel.key, frame.loc[labels], panel.mean_top1))
    return placed


def choose_panels(frame: pd.DataFrame) -> tuple[list[Panel], list[str]]:
    """Up to MAX_PANELS panels shared fairly between models, and a note for each model cut short.

    Each model keeps its variants with the highest mean top-1 (ties broken by variant order), so
    the plots stay readable however large the grid grows; fine-tuned rows join a shown panel.
    """
    candidates = _full_grid_panels(frame)
    if not candidates:
        raise ValueError(
            "no post-training variant run at more than one group size (finetuned == False) to plot"
        )
    model_keys = sorted({panel.key[:2] for panel in candidates})
    per_model = max(1, MAX_PANELS // len(model_keys))
    chosen, notes = [], []
    for model_key in model_keys:
        variants = [panel for panel in candidates if panel.key[:2] == model_key]
        best = sorted(variants, key=lambda panel: -panel.mean_top1)[:per_model]
        chosen += sorted(best, key=lambda panel: panel.key)
        if len(variants) > per_model:
            notes.append(
                f"{_model_label(model_key)}: best {per_model} of {len(variants)} variants; "
                "all are in results.csv"
            )
    return _with_finetuned(chosen, frame), notes


def _act_bits_colors(frame: pd.DataFrame) -> dict[int, str]:
    """Fixed colour per activation width so panels and plots can be compared at a glance."""
    return {bits: f"C{index}" for index, bits in enumerate(_act_bits_descending(frame))}


def _panel_title(key: tuple) -> str:
    phrases = _variant_phrases(tuple(key[2:]), quote="")
    return f"{_model_label(key[:2])}\n{', '.join(phrases[:3])}\n{', '.join(phrases[3:])}"


def _draw_fp32_line(axes: Axes, panel: Panel) -> None:
    fp32 = _fp32_top1_percent(panel.rows, f"panel {_key_text(panel.key)}")
    axes.axhline(fp32, color="black", linestyle="--", linewidth=1.0, label=f"FP32 ({fp32:.2f}%)")


def _save_figure(figure: Figure, path: Path) -> None:
    """PNG without the software-version tag so the bytes depend only on the data."""
    _write_atomically(
        path,
        lambda temp: figure.savefig(
            temp, format="png", dpi=PNG_DPI, metadata={"Software": None}
        ),
    )


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
    figure = Figure(figsize=(6.4 * columns, 4.8 * rows), layout="constrained")
    FigureCanvasAgg(figure)  # render with Agg without touching pyplot's global backend
    all_axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for axes, panel in zip(all_axes, panels):
        draw_panel(axes, panel)
        axes.set_title(_panel_title(panel.key), fontsize=9)
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=8, loc="best")
    for unused_axes in all_axes[len(panels):]:
        unused_axes.set_visible(False)
    figure.suptitle("\n".join([title, *(f"({note})" for note in notes)]))
    _save_figure(figure, path)
    return path


def _group_x_positions(frame: pd.DataFrame) -> dict[str, float]:
    """log2(N) for integer sizes; 'filter' and 'layer' as extra slots right of the largest N."""
    sizes = sorted({_parse_group_size(value) for value in frame["group_size"]}, key=_group_rank)
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
    for act_bits in _act_bits_descending(rows):
        series = _sorted_by_group(rows[rows["act_bits"] == act_bits])
        is_named = series["group_size"].isin(NAMED_GROUP_SIZES)
        color = colors[act_bits]
        label = _act_bits_label(act_bits)
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
    axes.set_xticks([x for _, x in ticks], [_group_tick_label(size) for size, _ in ticks])
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
    for group_size, group_rows in _sorted_by_group(rows).groupby("group_size", sort=False):
        top = group_rows.loc[group_rows["top1"].idxmax()]
        x, y = 100.0 * top["mult_eliminated"], 100.0 * top["top1"]
        _annotate_point(axes, x, y, _group_row_label(group_size))


def _finetuned_label(row: pd.Series, panel: Panel) -> str:
    """Say so when a fine-tuned point sits on a panel of another variant than its own."""
    own_variant = _row_panel_key(row) == panel.key
    return f"{_group_row_label(row['group_size'])} (ft{'' if own_variant else ', other variant'})"


def _draw_top1_vs_mult_eliminated(axes: Axes, panel: Panel, colors: dict[int, str]) -> None:
    finetuned = panel.rows["finetuned"].astype(bool)
    post_training, tuned = panel.rows[~finetuned], panel.rows[finetuned]
    for act_bits in _act_bits_descending(panel.rows):
        label, color = _act_bits_label(act_bits), colors[act_bits]
        series = _sorted_by_group(post_training[post_training["act_bits"] == act_bits])
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


# --------------------------------------------------------------------------------------------
# Report stage entry point
# --------------------------------------------------------------------------------------------


def _results_markdown(frame: pd.DataFrame) -> str:
    return "\n".join(
        [
            "# FGQ results",
            "",
            "Generated by the report stage from the PTQ and fine-tune records; "
            "do not edit by hand.",
            "",
            headline_markdown(frame),
            "## Tables",
            "",
            paper_table_markdown(frame),
            "## Plots",
            "",
            "![Top-1 vs group size](top1_vs_group_size.png)",
            "",
            "![Top-1 vs multiplications eliminated](top1_vs_mult_eliminated.png)",
            "",
        ]
    )


def write_report(records: list[dict], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write the CSV, markdown tables and both plots; return their paths keyed by file name."""
    if not records:
        raise ValueError("no result records to report")
    frame = results_frame(records)
    directory = Path(out_dir)
    paths = {name: directory / name for name in REPORT_FILE_NAMES}
    write_results_csv(frame, paths["results.csv"])
    _write_text_atomically(paths["results.md"], _results_markdown(frame))
    plot_top1_vs_group_size(frame, paths["top1_vs_group_size.png"])
    plot_top1_vs_mult_eliminated(frame, paths["top1_vs_mult_eliminated.png"])
    return paths
