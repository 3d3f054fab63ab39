"""The precision a ternary layer's group scales are stored in, applied in the fake-quant model.

At N=4 an fp32 scale costs 8 bits per weight, more than the 2-bit code, so narrower scales are the
main storage lever; accuracy must be measured with the scales as stored. ``int8`` stores each scale
as an 8-bit multiple of one fp32 scale per output filter (the filter's largest |scale| / 127), the
packed file's layout: a filter's scales share its BatchNorm factor, so one grid per filter fits them.
"""

from __future__ import annotations

import torch

SCALE_DTYPES = ("fp32", "fp16", "int8")
SCALE_BITS = {"fp32": 32, "fp16": 16, "int8": 8}
INT8_SCALE_MAX = 127


def validate_scale_dtype(scale_dtype: object) -> str:
    if scale_dtype not in SCALE_DTYPES:
        raise ValueError(f"scale_dtype must be one of {SCALE_DTYPES}, got {scale_dtype!r}")
    return scale_dtype  # type: ignore[return-value]


def stored_scales(scales: torch.Tensor, scale_dtype: str) -> torch.Tensor:
    """fp32 ``scales`` ([K, ...] per filter, or one per layer) as they read back after storage."""
    validate_scale_dtype(scale_dtype)
    if scale_dtype == "fp32":
        return scales
    if scale_dtype == "fp16":
        return scales.to(torch.float16).to(scales.dtype)
    per_filter = scales.reshape(scales.shape[0] if scales.dim() else 1, -1)
    largest = per_filter.abs().amax(dim=1, keepdim=True)
    step = torch.where(largest > 0, largest / INT8_SCALE_MAX, torch.ones_like(largest))
    multiples = torch.clamp(torch.round(per_filter / step), -INT8_SCALE_MAX, INT8_SCALE_MAX)
    return (multiples * step).reshape(scales.shape)


def ternary_storage_bits(filters: int, reduction: int, num_scales: int, scale_dtype: str) -> int:
    """Bits a ternary layer stores, as the packed file lays them out: 2-bit codes with each filter's
    row padded to whole bytes, the group scales, and for int8 scales one fp32 multiplier per filter."""
    code_bits = filters * -(-reduction // 4) * 8
    multiplier_bits = SCALE_BITS["fp32"] * filters if scale_dtype == "int8" else 0
    return code_bits + SCALE_BITS[validate_scale_dtype(scale_dtype)] * num_scales + multiplier_bits


def uniform_storage_bits(filters: int, weights: int, num_groups: int, bits: int, scale_dtype: str) -> int:
    """Bits of a uniform ``bits``-bit layer: its codes, a scale and a ``bits``-bit zero point per group,
    and for int8 scales one fp32 multiplier per filter."""
    multiplier_bits = SCALE_BITS["fp32"] * filters if scale_dtype == "int8" else 0
    return bits * weights + (SCALE_BITS[validate_scale_dtype(scale_dtype)] + bits) * num_groups + multiplier_bits
