"""Labels and number formats that the tables and the plots share, so both name things alike."""

from __future__ import annotations

import pandas as pd

from .frame import (
    EXTRA_TRAINING_COLUMN,
    FLOAT_ACTIVATION_BITS,
    VARIANT_KEYS,
    group_rank,
    parse_group_size,
)


def group_row_label(value: object) -> str:
    group_size = parse_group_size(value)
    if isinstance(group_size, int):
        return f"N={group_size}"
    return f"per-{group_size}"


def group_tick_label(value: object) -> str:
    return str(parse_group_size(value))


def act_bits_label(act_bits: int) -> str:
    if act_bits == FLOAT_ACTIVATION_BITS:
        return f"A{act_bits} (float)"
    return f"A{act_bits}"


def act_bits_descending(rows: pd.DataFrame) -> list[int]:
    return sorted({int(bits) for bits in rows["act_bits"]}, reverse=True)


def sorted_by_group(rows: pd.DataFrame) -> pd.DataFrame:
    return rows.sort_values("group_size", key=lambda column: column.map(group_rank), kind="stable")


def percent(fraction: float) -> str:
    return f"{100.0 * float(fraction):.2f}"


def fp32_top1_percent(rows: pd.DataFrame, context: str) -> float:
    """The one FP32 reference of ``rows``; several values mean records from different baselines."""
    values = sorted({round(float(value), 6) for value in rows["fp32_top1"]})
    if len(values) != 1:
        raise ValueError(f"expected one fp32_top1 for {context}, got {values}")
    return 100.0 * values[0]


def on_off(flag: bool) -> str:
    return "on" if flag else "off"


def key_text(key: tuple) -> str:
    """A group key as plain text for error messages (numpy bools print as True/False)."""
    return ", ".join(map(str, key))


def model_label(model_key: tuple) -> str:
    model, dataset = model_key
    return f"{model} on {dataset}"


def variant_of(row: pd.Series) -> tuple:
    return tuple(row[key] for key in VARIANT_KEYS)


def variant_phrases(variant: tuple, quote: str = "`") -> list[str]:
    """The variant as readable phrases; ``quote`` marks the free-text values (code in markdown). The
    weight format and scale storage are named when they are not the default ternary / fp32."""
    weight_format, scale_dtype, solver, rounding, act_calibration, policy, bn_reestimate, bias_correction = variant
    storage = [f"weights {quote}{weight_format}{quote}"] if weight_format != "ternary" else []
    storage += [f"{quote}{scale_dtype}{quote} scales"] if scale_dtype != "fp32" else []
    return [
        *storage,
        f"solver {quote}{solver}{quote}",
        f"rounding {quote}{rounding}{quote}",
        f"act. calibration {quote}{act_calibration}{quote}",
        f"policy {quote}{policy}{quote}",
        f"BN re-estimation {on_off(bn_reestimate)}",
        f"bias correction {on_off(bias_correction)}",
    ]


def variant_text(variant: tuple) -> str:
    return ", ".join(variant_phrases(variant))


def extra_training_phrase(rows: pd.DataFrame) -> str:
    """What fine-tuning cost, as a share of the FP32 baseline's training; empty when unrecorded."""
    if EXTRA_TRAINING_COLUMN not in rows:
        return ""
    fractions = sorted({round(float(value), 6) for value in rows[EXTRA_TRAINING_COLUMN].dropna()})
    if not fractions:
        return ""
    shares = " / ".join(f"{100.0 * fraction:.1f}%" for fraction in fractions)
    return f"extra training: {shares} of the baseline's"
