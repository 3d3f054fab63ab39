"""The paper's cost table for ImageNet-scale architectures, from the architectures alone.

Multiplications, storage and the potential speedup depend only on layer shapes and on which
layers are ternary, never on weight values, so torchvision architectures with random weights
give the numbers of the pretrained networks without downloading anything.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import pandas as pd
import torchvision
from torch import nn
from tqdm import tqdm

from .atomic import write_text_atomically
from .quant import QuantConfig, count_ops, paper_speedup, quantize_model
from .quant.scale_storage import SCALE_BITS, ternary_storage_bits
from .quant.ternary import GroupSize
from .render import CSV_FLOAT_FORMAT, MISSING_CELL, markdown_table
from .report import EFFECTIVE_GROUP_NOTE

DEFAULT_ARCHS = ("alexnet", "resnet50", "resnet101")
DEFAULT_GROUP_SIZES: tuple[GroupSize, ...] = (1, 2, 4, 8, 16, 32, 64, "filter", "layer")
DEFAULT_POLICIES = ("first_last_8bit", "ternarize_all")
SCALE_FORMATS = {32: "fp32", 16: "fp16", 8: "int8"}  # storage width of one group scale -> its name
DEFAULT_SCALE_BITS = tuple(SCALE_FORMATS)
IMAGENET_INPUT_SHAPE = (3, 224, 224)
CSV_NAME = "cost_table.csv"
MARKDOWN_NAME = "cost_table.md"
GIGA = 1e9

INTRO = (
    "Per-image cost of the Conv2d and Linear layers at the input resolution, counted from the "
    "torchvision architectures (weights play no part). Cost model (paper): relative to an FP32 "
    "multiply-accumulate, an 8-bit multiply costs 1/4 and a ternary addition 1/16, so groups of N "
    "weights sharing one scale give speedup(N) = 1/((1/N)/4 + (1-1/N)/16). The cost-model column "
    "prices every layer as it is quantized; the paper-model column is that closed form for N, "
    "which assumes every layer ternary with full groups. Layers kept at 8 bits (the first conv and "
    "the last FC under `first_last_8bit`) count one 8-bit multiply per MAC and store 8 bits per "
    "weight plus one fp32 scale per output channel; the scale width of a column applies to the "
    "ternary group scales (int8 scales are multiples of one fp32 scale per filter, counted too). "
    "Codes are 2 bits with each filter's row padded to whole bytes, as the packed file stores them. "
    "Per-filter and per-layer use one scale per whole filter or layer."
)


def _scale_column(scale_bits: int) -> str:
    return f"bits_per_weight_{SCALE_FORMATS[scale_bits]}_scales"


def _validate_axes(archs: Sequence, group_sizes: Sequence, policies: Sequence, scale_bits: Sequence) -> None:
    """Fail before any model is built, naming the bad axis or value."""
    axes = {"archs": archs, "group_sizes": group_sizes, "policies": policies, "scale_bits": scale_bits}
    for name, axis in axes.items():
        if len(axis) == 0:
            raise ValueError(f"{name} must not be empty")
    bad_bits = [bits for bits in scale_bits if bits not in SCALE_FORMATS]
    if bad_bits:
        raise ValueError(f"scale_bits must be among {tuple(SCALE_FORMATS)}, got {bad_bits}")


def _float_model(arch: str) -> nn.Module:
    """Random-init torchvision model: counts depend on shapes only, so no weights are needed."""
    return torchvision.models.get_model(arch, weights=None).eval()


def _configurations(
    archs: Sequence[str], policies: Sequence[str], group_sizes: Sequence[GroupSize]
) -> Iterator[tuple[str, str, GroupSize, nn.Module]]:
    """(arch, policy, N, float model), building each arch once since random init is slow."""
    for arch in archs:
        model = _float_model(arch)
        for policy, group_size in itertools.product(policies, group_sizes):
            yield arch, policy, group_size, model


def _quantized_copy(model: nn.Module, policy: str, group_size: GroupSize) -> nn.Module:
    config = QuantConfig(
        group_size=group_size, policy=policy, act_bits=32, bn_reestimate=False, bias_correction=False
    )
    return quantize_model(copy.deepcopy(model), config)


def _layer_weight_bits(layer: dict, scale_bits: int) -> float:
    """Storage of one layer with ``scale_bits`` group scales, from its row counted with fp32 scales.

    Only ternary group scales change width, so this avoids one forward pass per scale width.
    """
    if layer["kind"] != "ternary":
        return layer["weight_bits"]
    filters, reduction = layer["filters"], layer["weights"] // layer["filters"]
    num_scales = (layer["weight_bits"] - ternary_storage_bits(filters, reduction, 0, "fp32")) // SCALE_BITS["fp32"]
    return ternary_storage_bits(filters, reduction, num_scales, SCALE_FORMATS[scale_bits])


def bits_per_weight(layer_rows: list[dict], scale_bits: int) -> float:
    """Network bits per weight with ``scale_bits`` group scales, from rows counted with fp32 scales."""
    total_bits = sum(_layer_weight_bits(layer, scale_bits) for layer in layer_rows)
    return total_bits / sum(layer["weights"] for layer in layer_rows)


def _paper_speedup_or_none(group_size: GroupSize) -> float | None:
    """The closed form is defined for an integer N only; filter/layer groups have no single N."""
    return paper_speedup(group_size) if isinstance(group_size, int) else None


def _cost_row(
    arch: str, policy: str, group_size: GroupSize, model: nn.Module,
    scale_bits: Sequence[int], input_shape: tuple[int, ...],
) -> dict:
    ops = count_ops(model, input_shape, scale_dtype="fp32")
    summary = ops.summary()
    layer_rows = ops.rows()
    return {
        "arch": arch,
        "policy": policy,
        "group_size": group_size,
        "macs": summary["macs"],
        "multiplications": summary["multiplications"],
        "mult_eliminated": summary["mult_eliminated"],
        **{_scale_column(bits): bits_per_weight(layer_rows, bits) for bits in scale_bits},
        "potential_speedup": summary["potential_speedup"],
        "paper_speedup": _paper_speedup_or_none(group_size),
    }


def cost_rows(
    archs: Sequence[str] = DEFAULT_ARCHS,
    group_sizes: Sequence[GroupSize] = DEFAULT_GROUP_SIZES,
    policies: Sequence[str] = DEFAULT_POLICIES,
    scale_bits: Sequence[int] = DEFAULT_SCALE_BITS,
    input_shape: tuple[int, ...] = IMAGENET_INPUT_SHAPE,
) -> list[dict]:
    """One row per (arch, policy, N): per-image MACs, multiplications, storage and speedups."""
    _validate_axes(archs, group_sizes, policies, scale_bits)
    total = len(archs) * len(policies) * len(group_sizes)
    rows = []
    for arch, policy, group_size, model in tqdm(
        _configurations(archs, policies, group_sizes), total=total, desc="cost table", unit="config"
    ):
        quantized = _quantized_copy(model, policy, group_size)
        rows.append(_cost_row(arch, policy, group_size, quantized, scale_bits, tuple(input_shape)))
    return rows


def _group_label(group_size: GroupSize | str) -> str:
    """'N=4' for integer sizes (also in their text form), 'per-filter' / 'per-layer' otherwise."""
    text = str(group_size)
    return f"N={text}" if text.isdigit() else f"per-{text}"


def _scale_widths(rows: list[dict]) -> list[int]:
    """Scale widths the rows carry, widest first, in the order the columns are shown."""
    return [bits for bits in SCALE_FORMATS if _scale_column(bits) in rows[0]]


def _block_macs(arch: str, policy: str, rows: list[dict]) -> int:
    """The block's single MAC count; differing values mean rows from different input shapes."""
    values = sorted({int(row["macs"]) for row in rows})
    if len(values) != 1:
        raise ValueError(f"expected one MAC count for {arch} / {policy}, got {values}")
    return values[0]


def _speedup_cell(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING_CELL
    return f"{float(value):.2f}"


def _table_cells(row: dict, widths: list[int]) -> list[str]:
    return [
        _group_label(row["group_size"]),
        f"{100.0 * float(row['mult_eliminated']):.2f}",
        *(f"{float(row[_scale_column(bits)]):.2f}" for bits in widths),
        _speedup_cell(row["potential_speedup"]),
        _speedup_cell(row["paper_speedup"]),
    ]


def _block_markdown(arch: str, policy: str, rows: list[dict]) -> str:
    widths = _scale_widths(rows)
    header = [
        "group",
        "mult. eliminated (%)",
        *(f"bits/weight ({SCALE_FORMATS[bits]} scales)" for bits in widths),
        "potential speedup (cost model, x)",
        "paper model speedup (x)",
    ]
    lines = [
        f"### {arch}, policy `{policy}`: {_block_macs(arch, policy, rows) / GIGA:.2f} GMACs per image",
        "",
        markdown_table(header, [_table_cells(row, widths) for row in rows], text_columns=header[:1]),
    ]
    return "\n".join(lines)


def cost_table_markdown(rows: list[dict]) -> str:
    """One table per (arch, policy), rows in the order given, after a note on the cost model."""
    if not rows:
        raise ValueError("no cost rows to tabulate")
    blocks: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        blocks.setdefault((row["arch"], row["policy"]), []).append(row)
    sections = [
        "# FGQ cost on ImageNet-scale architectures",
        "Generated by the cost_table stage; do not edit by hand.",
        INTRO,
        EFFECTIVE_GROUP_NOTE,
        *(_block_markdown(arch, policy, block) for (arch, policy), block in blocks.items()),
    ]
    return "\n\n".join(sections) + "\n"


def cost_table_csv(rows: list[dict]) -> str:
    """CSV text with fixed float format; group sizes as text since the column mixes ints and names."""
    if not rows:
        raise ValueError("no cost rows to write")
    frame = pd.DataFrame.from_records([{**row, "group_size": str(row["group_size"])} for row in rows])
    frame["paper_speedup"] = frame["paper_speedup"].astype("float64")
    return frame.to_csv(index=False, float_format=CSV_FLOAT_FORMAT, lineterminator="\n")



def write_cost_table(out_dir: str | os.PathLike, **kwargs) -> dict[str, Path]:
    """Compute :func:`cost_rows` (``kwargs`` passed on) and write the CSV and markdown tables."""
    rows = cost_rows(**kwargs)
    directory = Path(out_dir)
    return {
        CSV_NAME: write_text_atomically(directory / CSV_NAME, cost_table_csv(rows)),
        MARKDOWN_NAME: write_text_atomically(directory / MARKDOWN_NAME, cost_table_markdown(rows)),
    }
