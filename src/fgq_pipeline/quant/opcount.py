"""Operation counts, storage and the paper's potential-speedup model for a quantized network.

Inside a ternary group the dot product is additions only; one multiply by the group's scale
follows. Relative to an FP32 multiply-accumulate the paper's model prices an 8-bit multiply at 1/4
and a ternary addition at 1/16, which gives speedup(N) = 1 / ((1/N)/4 + (1 - 1/N)/16).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..devices import model_device
from ..modes import eval_mode
from .modules import QUANT_LAYERS, WeightFormat, shapes_only
from .scale_storage import ternary_storage_bits, uniform_storage_bits
from .ternary import effective_group_size, groups_per_filter
from .uniform import grid_shape

INT8_MULTIPLY_COST = 1 / 4
TERNARY_ADD_COST = 1 / 16
FLOAT_BITS = 32
INT8_BITS = 8


@dataclass(frozen=True)
class LayerOps:
    name: str
    kind: str
    effective_group_size: int
    filters: int
    macs: int
    multiplications: int
    additions: int
    weights: int
    weight_bits: int
    cost: float


@dataclass(frozen=True)
class NetworkOps:
    layers: list[LayerOps]

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def multiplications(self) -> int:
        return sum(layer.multiplications for layer in self.layers)

    @property
    def mult_eliminated(self) -> float:
        return 1.0 - self.multiplications / self.macs

    @property
    def bits_per_weight(self) -> float:
        return sum(layer.weight_bits for layer in self.layers) / sum(layer.weights for layer in self.layers)

    @property
    def potential_speedup(self) -> float:
        return self.macs / sum(layer.cost for layer in self.layers)

    def summary(self) -> dict[str, float]:
        return {
            "macs": self.macs,
            "multiplications": self.multiplications,
            "mult_eliminated": self.mult_eliminated,
            "bits_per_weight": self.bits_per_weight,
            "potential_speedup": self.potential_speedup,
        }

    def rows(self) -> list[dict]:
        return [asdict(layer) for layer in self.layers]


def paper_speedup(group_size: int) -> float:
    """The paper's potential speedup for groups of ``group_size`` over FP32 MACs."""
    return 1.0 / ((1.0 / group_size) * INT8_MULTIPLY_COST + (1.0 - 1.0 / group_size) * TERNARY_ADD_COST)


def count_ops(model: nn.Module, input_shape: tuple[int, ...], scale_dtype: str | None = None) -> NetworkOps:
    """Count per-image work of every Conv2d/Linear of ``model`` for one input of ``input_shape``.

    Layers that are not fake-quant layers count as float. Ternary group scales are counted as each
    layer stores them (its ``scale_dtype``), or all as ``scale_dtype`` when given.
    """
    outputs: dict[nn.Module, torch.Size] = {}
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    hooks = [m.register_forward_hook(lambda mod, _i, out: outputs.__setitem__(mod, out.shape)) for _, m in layers]
    try:
        with torch.no_grad(), shapes_only(), eval_mode(model):
            model(torch.zeros(1, *input_shape, device=model_device(model)))
    finally:
        for hook in hooks:
            hook.remove()
    return NetworkOps([_layer_ops(name, m, outputs[m], scale_dtype) for name, m in layers if m in outputs])


def _layer_ops(name: str, layer: nn.Module, output_shape: torch.Size, scale_dtype: str | None) -> LayerOps:
    shape = layer.weight.shape
    fmt = layer.weight_format if isinstance(layer, QUANT_LAYERS) else WeightFormat("float")
    outputs = int(torch.Size(output_shape[1:]).numel())  # output values per image
    reduction = int(torch.Size(shape[1:]).numel())  # weights per output value
    macs = outputs * reduction
    weights = int(shape.numel())
    if fmt.kind == "uniform":  # a multiply per weight; b-bit codes, and a scale and zero point per group
        num_groups = int(grid_shape(shape, fmt.group_size).numel())
        bits = uniform_storage_bits(shape[0], weights, num_groups, fmt.bits, scale_dtype or fmt.scale_dtype)
        return LayerOps(name, "uniform", effective_group_size(shape, fmt.group_size), shape[0], macs, macs, macs,
                        weights, bits, macs * INT8_MULTIPLY_COST)
    if fmt.kind != "ternary":
        bits = FLOAT_BITS * weights if fmt.kind == "float" else INT8_BITS * weights + FLOAT_BITS * shape[0]
        cost = macs * (1.0 if fmt.kind == "float" else INT8_MULTIPLY_COST)
        return LayerOps(name, fmt.kind, 1, shape[0], macs, macs, macs, weights, bits, cost)
    scales_per_group = 2 if fmt.solver == "asymmetric" else 1
    groups = groups_per_filter(shape, fmt.group_size)
    multiplications = outputs * groups * scales_per_group
    num_scales = (1 if fmt.group_size == "layer" else shape[0] * groups) * scales_per_group
    bits = ternary_storage_bits(shape[0], reduction, num_scales, scale_dtype or fmt.scale_dtype)
    cost = multiplications * INT8_MULTIPLY_COST + (macs - min(multiplications, macs)) * TERNARY_ADD_COST
    return LayerOps(
        name, "ternary", effective_group_size(shape, fmt.group_size), shape[0], macs, multiplications, macs, weights, bits, cost
    )
