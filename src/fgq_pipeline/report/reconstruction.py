"""The block-reconstruction rows beside the same configurations rounded GPTQ-style, with their time."""

from __future__ import annotations

import pandas as pd

from ..render import markdown_table
from .frame import MODEL_KEYS, VARIANT_KEYS
from .labels import act_bits_label, group_row_label, model_label, percent

SECONDS_COLUMN = "reconstruct_seconds"  # wall time of the reconstruction of a row's model
HEADER = ["model", "weights", "N", "activations", "reconstructed top-1", "GPTQ-style top-1", "gain", "FP32 top-1",
          "minutes"]
MATCH_KEYS = [*MODEL_KEYS, "group_size", "act_bits", *(key for key in VARIANT_KEYS if key != "rounding")]


def reconstruction_sections(frame: pd.DataFrame) -> list[str]:
    """The section tabling every post-training ``rounding: reconstruct`` row; none without such rows."""
    post_training = frame[~frame["finetuned"]]
    reconstructed = post_training[post_training["rounding"] == "reconstruct"]
    if reconstructed.empty:
        return []
    gptq = post_training[post_training["rounding"] == "gptq"].set_index(MATCH_KEYS)["top1"]
    rows = []
    for _, row in reconstructed.iterrows():
        key = tuple(row[k] for k in MATCH_KEYS)
        baseline = gptq.get(key)
        minutes = row.get(SECONDS_COLUMN)
        rows.append([
            model_label(tuple(row[k] for k in MODEL_KEYS)), row["weight_format"], group_row_label(row["group_size"]),
            act_bits_label(int(row["act_bits"])), percent(row["top1"]),
            "-" if baseline is None else percent(baseline),
            "-" if baseline is None else f"{100 * (row['top1'] - baseline):+.2f}",
            percent(row["fp32_top1"]), "-" if pd.isna(minutes) else f"{minutes / 60:.1f}",
        ])
    return ["\n".join([
        "## Block reconstruction",
        "",
        ("Each configuration with `rounding: reconstruct` (settings: the `reconstruct` section of the config, "
         "chosen on training images calibration never draws) next to the same configuration rounded GPTQ-style "
         "without learning. *Minutes*: wall time of the reconstruction alone on the machine that ran the grid."),
        "",
        markdown_table(HEADER, rows, text_columns=HEADER[:4]),
        "",
    ])]
