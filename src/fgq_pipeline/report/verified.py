"""The verify stage's records in the report: columns on the rows they verify, and their own table."""

from __future__ import annotations

from collections.abc import Sequence

from ..render import markdown_table

ROW_KEYS = ("group_size", "act_bits", "solver", "rounding", "act_calibration", "policy", "bn_reestimate",
            "bias_correction", "finetuned")
COLUMNS = ("integer_top1", "logit_mismatches")  # per scale dtype: integer_top1_fp32, logit_mismatches_fp16, ...
HEADER = ["model", "N", "act bits", "scales", "integer top-1", "scored top-1", "float fake-quant top-1",
          "logit mismatches", "top-1 agreement", "max logit diff", "file bytes", "bits/weight", "integer images/s"]


def attach_verification(records: Sequence[dict], verified: Sequence[dict]) -> list[dict]:
    """``records`` with each verified row's integer top-1 and logit mismatches per scale dtype."""
    by_row = {}
    for check in verified:
        columns = by_row.setdefault(_row_key(check), {})
        columns.update({f"{column}_{check['scale_dtype']}": check[column] for column in COLUMNS})
    unmatched = set(by_row) - {_row_key(record) for record in records}
    if unmatched:
        raise ValueError(f"verified configurations without a result row: {sorted(map(str, unmatched))}")
    return [{**record, **by_row.get(_row_key(record), {})} for record in records]


def verified_markdown(verified: Sequence[dict]) -> str:
    """The "verified in integer arithmetic" table: one row per packed file."""
    rows = [[check["model"], str(check["group_size"]), str(check["act_bits"]), check["scale_dtype"],
             f"{100 * check['integer_top1']:.2f}", f"{100 * check['scored_top1']:.2f}",
             f"{100 * check['float_top1']:.2f}", str(check["logit_mismatches"]),
             f"{100 * check['top1_agreement']:.2f}%", f"{check['max_logit_difference']:.3g}",
             f"{check['file_bytes']:,}", f"{check['bits_per_weight']:.2f}", f"{check['integer_images_per_s']:,.0f}"]
            for check in verified]
    images = sorted({check["num_images"] for check in verified})
    return "\n".join([
        "## Verified in integer arithmetic",
        "",
        f"Each exported file run over the whole test set ({', '.join(f'{n:,}' for n in images)} images) by the "
        "Numba integer path and by the torch twin of the model it was exported from, which computes the "
        "arithmetic every accuracy in this report uses. *Logit mismatches*: images whose logits differ in any "
        "bit (must be 0). *Float fake-quant*: the same model in float arithmetic, for comparison. Bits/weight "
        "and bytes are measured from the file (codes and scales; the fp32 bias is not counted).",
        "",
        markdown_table(HEADER, rows, text_columns=HEADER[:1] + HEADER[3:4]),
        "",
    ])


def _row_key(record: dict) -> tuple:
    return tuple(str(record[key]) for key in ROW_KEYS)
