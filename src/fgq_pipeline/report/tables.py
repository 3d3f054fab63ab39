"""The markdown a reader comes for: paper-shaped tables per variant, ablations and the headline."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from ..render import MISSING_CELL, markdown_table
from .frame import (
    BLOCK_KEYS,
    FLOAT_ACTIVATION_BITS,
    MODEL_KEYS,
    VARIANT_KEYS,
    group_rank,
)
from .labels import (
    act_bits_descending,
    act_bits_label,
    extra_training_phrase,
    fp32_top1_percent,
    group_row_label,
    key_text,
    model_label,
    on_off,
    percent,
    sorted_by_group,
    variant_of,
    variant_text,
)

HEADLINE_GROUP_SIZE = 4
HEADLINE_ACT_BITS = (8, 4)
EFFECTIVE_GROUP_NOTE = (
    "For layers with fewer input channels than N the effective group is the channel count: "
    "a group never crosses filters or kernel positions."
)
BLOCK_HEADER = ["group", "mult. eliminated", "bits/weight", "potential speedup"]
ABLATION_HEADER = ["weights", "scales", "solver", "rounding", "act. calibration", "policy", "BN re-est.", "bias corr."]


def _top1_headers(act_bits_columns: list[int]) -> list[str]:
    return [f"top-1 {act_bits_label(bits)}" for bits in act_bits_columns]


def _block_heading(key: tuple, rows: pd.DataFrame) -> str:
    model, dataset, *variant, finetuned = key
    stage = "post-training"
    if finetuned:
        extra_training = extra_training_phrase(rows)
        stage = f"fine-tuned ({extra_training})" if extra_training else "fine-tuned"
    return f"### {model_label((model, dataset))}: {variant_text(tuple(variant))}, {stage}"


def _cost_cell(rows: pd.DataFrame, column: str, formatter: Callable[[float], str]) -> str:
    """One value when it does not depend on act_bits, else each value labelled with its act_bits."""
    by_bits = [(int(row.act_bits), formatter(getattr(row, column))) for row in rows.itertuples()]
    distinct = {text for _, text in by_bits}
    if len(distinct) == 1:
        return distinct.pop()
    return " / ".join(f"{text} ({act_bits_label(bits)})" for bits, text in by_bits)


def _top1_cell(rows: pd.DataFrame, act_bits: int, context: str) -> str:
    matching = rows[rows["act_bits"] == act_bits]
    if len(matching) > 1:
        raise ValueError(
            f"{len(matching)} results for {context}, {act_bits_label(act_bits)}; "
            "one table cell can show only one"
        )
    if matching.empty:
        return MISSING_CELL
    return percent(matching["top1"].iloc[0])


def _group_cells(
    group_size: str, rows: pd.DataFrame, act_bits_columns: list[int], block: str
) -> list[str]:
    rows = rows.sort_values("act_bits", ascending=False, kind="stable")
    context = f"{group_row_label(group_size)} in block '{block}'"
    return [
        group_row_label(group_size),
        _cost_cell(rows, "mult_eliminated", lambda value: f"{percent(value)}%"),
        _cost_cell(rows, "bits_per_weight", lambda value: f"{float(value):.2f}"),
        _cost_cell(rows, "potential_speedup", lambda value: f"{float(value):.2f}x"),
        *(_top1_cell(rows, bits, context) for bits in act_bits_columns),
    ]


def _block_markdown(key: tuple, rows: pd.DataFrame) -> str:
    block = key_text(key)
    fp32 = fp32_top1_percent(rows, f"block {block}")
    act_bits_columns = act_bits_descending(rows)
    table_rows = [
        _group_cells(str(group_size), group_rows, act_bits_columns, block)
        for group_size, group_rows in sorted_by_group(rows).groupby("group_size", sort=False)
    ]
    header = [*BLOCK_HEADER, *_top1_headers(act_bits_columns)]
    return "\n".join(
        [
            _block_heading(key, rows),
            "",
            f"FP32 top-1: {fp32:.2f}%",
            "",
            markdown_table(header, table_rows, text_columns=header[:1]),
        ]
    )


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


def _ablation_cells(
    variant: tuple, rows: pd.DataFrame, act_bits_columns: list[int], context: str
) -> list[str]:
    weight_format, scale_dtype, solver, rounding, act_calibration, policy, bn_reestimate, bias_correction = variant
    return [
        weight_format,
        scale_dtype,
        solver,
        rounding,
        act_calibration,
        policy,
        on_off(bn_reestimate),
        on_off(bias_correction),
        *(_top1_cell(rows, bits, f"{context}, {variant_text(variant)} in the ablation")
          for bits in act_bits_columns),
    ]


def _ablation_markdown(model_key: tuple, group_size: str, rows: pd.DataFrame) -> str:
    """Every variant run at one group size side by side, so each repair's gain can be read off."""
    group = group_row_label(group_size)
    fp32 = fp32_top1_percent(rows, f"the ablation at {group} of {model_label(model_key)}")
    act_bits_columns = act_bits_descending(rows)
    ladder_bits = _ladder_act_bits(act_bits_columns)
    table_rows = [
        _ablation_cells(variant, variant_rows, act_bits_columns, group)
        for variant, variant_rows in _ablation_ladder(rows, ladder_bits)
    ]
    return "\n".join(
        [
            f"### {model_label(model_key)}: ablation at {group}",
            "",
            f"FP32 top-1: {fp32:.2f}%",
            "",
            f"One row per post-training variant run at {group}, sorted by "
            f"top-1 {act_bits_label(ladder_bits)} from lowest to highest.",
            "",
            markdown_table(
                [*ABLATION_HEADER, *_top1_headers(act_bits_columns)],
                table_rows,
                text_columns=ABLATION_HEADER,
            ),
        ]
    )


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
        for size in sorted(ablation_sizes, key=group_rank)
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


def _best_post_training_item(rows: pd.DataFrame, act_bits: int) -> str:
    label = (
        f"Best post-training top-1, {group_row_label(HEADLINE_GROUP_SIZE)}, "
        f"{act_bits_label(act_bits)}"
    )
    candidates = rows[  # the method's own rows: the uniform baselines have their place on the frontier
        ~rows["finetuned"].astype(bool)
        & (rows["weight_format"] == "ternary")
        & (rows["group_size"] == str(HEADLINE_GROUP_SIZE))
        & (rows["act_bits"] == act_bits)
    ]
    if candidates.empty:
        return f"- {label}: not measured"
    best = candidates.loc[candidates["top1"].idxmax()]
    return f"- {label}: {percent(best['top1'])}% ({variant_text(variant_of(best))})"


def _finetuned_items(rows: pd.DataFrame) -> list[str]:
    finetuned = rows[rows["finetuned"].astype(bool)]
    items = []
    for label in finetuned.index:
        row = finetuned.loc[[label]]
        group_size, act_bits = row["group_size"].iloc[0], int(row["act_bits"].iloc[0])
        item = (
            f"- Fine-tuned top-1, {group_row_label(group_size)}, {act_bits_label(act_bits)}: "
            f"{percent(row['top1'].iloc[0])}%"
        )
        extra_training = extra_training_phrase(row)
        items.append(f"{item} ({extra_training})" if extra_training else item)
    return items


def headline_markdown(frame: pd.DataFrame) -> str:
    """The numbers a reader comes for, per model, so they need not be dug out of the tables."""
    lines = ["## Headline", ""]
    for model_key, rows in frame.groupby(MODEL_KEYS, sort=False):
        fp32 = fp32_top1_percent(rows, model_label(model_key))
        lines += [f"**{model_label(model_key)}**", "", f"- FP32 top-1: {fp32:.2f}%"]
        lines += [_best_post_training_item(rows, bits) for bits in HEADLINE_ACT_BITS]
        lines += [*_finetuned_items(rows), ""]
    return "\n".join(lines)
