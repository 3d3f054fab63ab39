"""Result records checked and ordered into the frame every report is built from, and its CSV.

Rows are sorted deterministically and floats written with a fixed format, so the committed
``results.csv`` changes only when the records do.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import atomic_path
from ..checks import is_int
from ..render import CSV_FLOAT_FORMAT

MODEL_KEYS = ["model", "dataset"]
VARIANT_KEYS = [
    "weight_format",
    "scale_dtype",
    "solver",
    "rounding",
    "act_calibration",
    "policy",
    "bn_reestimate",
    "bias_correction",
]
PANEL_KEYS = [*MODEL_KEYS, *VARIANT_KEYS]
BLOCK_KEYS = [*PANEL_KEYS, "finetuned"]
RESULT_COLUMNS = [
    *MODEL_KEYS,
    "group_size",
    "act_bits",
    *VARIANT_KEYS,
    "finetuned",
    "top1",
    "top5",
    "fp32_top1",
    "mult_eliminated",
    "bits_per_weight",
    "potential_speedup",
]
NAMED_GROUP_SIZES = ("filter", "layer")
SCALE_DTYPE_ORDER = ("fp32", "fp16", "int8")  # widest first, as the tables list them
FLOAT_ACTIVATION_BITS = 32
ALLOWED_ACT_BITS = (*range(2, 9), FLOAT_ACTIVATION_BITS)
BOOLEAN_COLUMNS = ("bn_reestimate", "bias_correction", "finetuned")
TEXT_COLUMNS = ("model", "dataset", "weight_format", "scale_dtype", "solver", "rounding", "act_calibration", "policy")
EXTRA_TRAINING_COLUMN = "extra_training_fraction"


def _is_boolean(value: object) -> bool:
    return isinstance(value, (bool, np.bool_))


def parse_group_size(value: object) -> int | str:
    """Group size as int or 'filter'/'layer', accepting the text form the frame and CSV use."""
    if isinstance(value, str) and value in NAMED_GROUP_SIZES:
        return value
    if isinstance(value, str) and value.isdigit() and int(value) >= 1:
        return int(value)
    if is_int(value) and int(value) >= 1:
        return int(value)
    raise ValueError(f"group_size must be a positive integer, 'filter' or 'layer', got {value!r}")


def group_rank(value: object) -> tuple[int, int]:
    """Sort key putting integer group sizes in numeric order, then 'filter', then 'layer'."""
    group_size = parse_group_size(value)
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
        parse_group_size(record["group_size"])
    except ValueError as error:
        raise ValueError(f"record {index}: {error}") from None
    act_bits = record["act_bits"]
    if not is_int(act_bits) or int(act_bits) not in ALLOWED_ACT_BITS:
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
        record["weight_format"] != "ternary",
        record["weight_format"],
        SCALE_DTYPE_ORDER.index(record["scale_dtype"]) if record["scale_dtype"] in SCALE_DTYPE_ORDER else 0,
        record["scale_dtype"],
        record["solver"],
        record["rounding"],
        record["act_calibration"],
        record["policy"],
        bool(record["bn_reestimate"]),
        bool(record["bias_correction"]),
        -int(record["act_bits"]),
        group_rank(record["group_size"]),
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
    return bool(present) and all(is_int(value) for value in present)


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
        {**record, "group_size": str(parse_group_size(record["group_size"]))}
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


def write_results_csv(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """CSV with fixed float formatting and line endings, so equal inputs give equal bytes."""
    target = Path(path)
    with atomic_path(target) as temp:
        frame.to_csv(temp, index=False, float_format=CSV_FLOAT_FORMAT, lineterminator="\n")
    return target
