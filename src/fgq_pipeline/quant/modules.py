"""Fake-quant Conv2d / Linear: quantized weights and input activations, float arithmetic.

They compute what the integer path computes (up to float rounding) and keep float shadow weights
with a straight-through gradient, so the same modules serve evaluation and fine-tuning.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .activation import ActQuantizer
from .scale_storage import stored_scales, validate_scale_dtype
from .ternary import (
    GroupSize,
    TernaryWeights,
    ternarize,
    validate_group_size,
    validate_solver,
)
from .uniform import grid_shape, quantize_uniform, validate_weight_bits

WEIGHT_KINDS = ("ternary", "uniform", "int8", "float")
INT8_MAX = 127
_SHAPES_ONLY = ContextVar("shapes_only", default=False)


@contextmanager
def shapes_only() -> Iterator[None]:
    """Skip weight quantization in forward passes that only need output shapes (op counting)."""
    token = _SHAPES_ONLY.set(True)
    try:
        yield
    finally:
        _SHAPES_ONLY.reset(token)


@dataclass(frozen=True)
class WeightFormat:
    """How one layer's weights are stored: ternary groups, uniform ``bits``-bit groups (the baseline),
    int8 per output channel, or float."""

    kind: Literal["ternary", "uniform", "int8", "float"] = "ternary"
    group_size: GroupSize = 4
    solver: str = "exact"
    scale_dtype: str = "fp32"  # storage of the group scales (see scale_storage)
    bits: int = 2  # uniform only

    def __post_init__(self) -> None:
        if self.kind not in WEIGHT_KINDS:
            raise ValueError(f"weight kind must be one of {WEIGHT_KINDS}, got {self.kind!r}")
        if self.kind in ("ternary", "uniform"):
            validate_group_size(self.group_size)
            validate_solver(self.solver)
            validate_scale_dtype(self.scale_dtype)
        if self.kind == "uniform":
            validate_weight_bits(self.bits)


def quantize_int8_per_channel(weight: torch.Tensor) -> torch.Tensor:
    """Symmetric 8-bit weights with one scale per output channel (dequantized)."""
    max_abs = weight.detach().abs().flatten(1).amax(dim=1).clamp(min=1e-12)
    scale = (max_abs / INT8_MAX).view(-1, *([1] * (weight.dim() - 1)))
    return torch.clamp(torch.round(weight.detach() / scale), -INT8_MAX, INT8_MAX) * scale


def quantize_weight(weight: torch.Tensor, fmt: WeightFormat, grid: torch.Tensor | None = None) -> torch.Tensor:
    """Dequantized weights in ``fmt`` with a straight-through gradient to the float weights; a uniform
    layer's fixed ``grid``, if it has one."""
    if fmt.kind == "float":
        return weight
    if fmt.kind == "int8":
        quantized = quantize_int8_per_channel(weight)
    elif fmt.kind == "uniform":
        quantized = quantize_uniform(weight, fmt.bits, fmt.group_size, fmt.scale_dtype, grid).to(weight.dtype)
    else:
        quantized = stored_ternary(weight, fmt).dequantize().to(weight.dtype)
    return weight + (quantized - weight).detach()


def stored_ternary(weight: torch.Tensor, fmt: WeightFormat) -> TernaryWeights:
    """``weight``'s ternary codes with the scales as ``fmt.scale_dtype`` stores them."""
    ternary = ternarize(weight, fmt.group_size, fmt.solver)
    ternary.scales = stored_scales(ternary.scales, fmt.scale_dtype)
    if ternary.neg_scales is not None:
        ternary.neg_scales = stored_scales(ternary.neg_scales, fmt.scale_dtype)
    return ternary


class _QuantLayer:
    """Shared state of the fake-quant layers: weight format, input quantizer, output correction."""

    weight: nn.Parameter
    weight_format: WeightFormat
    input_quantizer: ActQuantizer

    def _init_quant(self, weight_format: WeightFormat, input_quantizer: ActQuantizer) -> None:
        self.weight_format = weight_format
        self.input_quantizer = input_quantizer
        # Per-output-channel shift added by bias correction; zero until a repair sets it.
        self.register_buffer("bias_correction", torch.zeros(self.weight.shape[0]))
        if weight_format.kind == "uniform":  # scale and zero point per group; NaN until fixed
            shape = grid_shape(self.weight.shape, weight_format.group_size)
            self.register_buffer("uniform_grid", torch.full((2, *shape), float("nan"), device=self.weight.device))

    def fix_grid(self, grid: torch.Tensor) -> None:
        """Keep a uniform layer on ``grid`` ([2, *groups]: scales, zero points) instead of refitting it."""
        self.uniform_grid.copy_(grid)

    def _grid(self) -> torch.Tensor | None:
        grid = getattr(self, "uniform_grid", None)
        return None if grid is None or grid.isnan().any() else grid

    def quantized_weight(self) -> torch.Tensor:
        """Quantized weights; cached while no gradient is needed and the weights are unchanged."""
        if _SHAPES_ONLY.get():
            return self.weight
        if torch.is_grad_enabled():
            return quantize_weight(self.weight, self.weight_format, self._grid())
        grid = getattr(self, "uniform_grid", None)
        key = (self.weight._version, self.weight.data_ptr(), None if grid is None else grid._version)
        if getattr(self, "_cached_weight", (None, None))[0] != key:
            self._cached_weight = (key, quantize_weight(self.weight, self.weight_format, self._grid()))
        return self._cached_weight[1]

    def ternary_weights(self) -> TernaryWeights:
        """Codes and scales of this layer as stored (for export and the integer path)."""
        if self.weight_format.kind != "ternary":
            raise ValueError(f"layer weights are {self.weight_format.kind}, not ternary")
        return stored_ternary(self.weight, self.weight_format)


class QuantConv2d(_QuantLayer, nn.Conv2d):
    @classmethod
    def from_float(cls, conv: nn.Conv2d, weight_format: WeightFormat, input_quantizer: ActQuantizer) -> "QuantConv2d":
        layer = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
            dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode,
        )
        layer.load_state_dict(conv.state_dict())
        layer._init_quant(weight_format, input_quantizer)
        return layer.to(conv.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._conv_forward(self.input_quantizer(x), self.quantized_weight(), self.bias)
        return out + self.bias_correction.view(1, -1, 1, 1)


class QuantLinear(_QuantLayer, nn.Linear):
    @classmethod
    def from_float(cls, linear: nn.Linear, weight_format: WeightFormat, input_quantizer: ActQuantizer) -> "QuantLinear":
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        layer.load_state_dict(linear.state_dict())
        layer._init_quant(weight_format, input_quantizer)
        return layer.to(linear.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.input_quantizer(x), self.quantized_weight(), self.bias) + self.bias_correction


QUANT_LAYERS = (QuantConv2d, QuantLinear)
