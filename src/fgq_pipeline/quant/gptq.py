"""Error-compensating ternary rounding (GPTQ, Frantar et al. 2022) adapted to per-group codes.

Layer by layer, in network order, the input columns of a weight matrix are quantized one at a time
and each column's rounding error is pushed onto the columns not yet quantized, through the inverse
Hessian H = X^T X of the layer's inputs, so the layer's output on calibration data, not its
weights, stays close to FP32. A group's scales come from the per-group solver (exact by default)
applied to the group's weights as they stand when its first column comes up; inside the group each
column is rounded to the nearest of {-alpha, 0, +alpha}.

The result is written back as ternary values, on which the per-group solvers are idempotent, so
the fake-quant layers reproduce it exactly.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..modes import eval_mode
from .batches import batch_images
from .modules import QuantConv2d, WeightFormat
from .surgery import quant_layers
from .ternary import GroupSize, solve_groups
from .uniform import fit_grid, round_to_grid

DAMPING = 0.01  # fraction of the mean Hessian diagonal added to it, as in GPTQ
BLOCK_COLUMNS = 128  # columns updated one by one before the rest is updated by one matrix product


class _InputsCaptured(Exception):
    """Stops a forward pass once the layer being quantized has seen its input."""


@torch.no_grad()
def gptq_ternarize(model: nn.Module, batches: Iterable) -> None:
    """Replace every grouped (ternary or uniform) layer's weights by error-compensated ones, in order;
    a uniform layer keeps the grids its groups were rounded to."""
    for _, layer in quant_layers(model):
        fmt = layer.weight_format
        if fmt.kind not in ("ternary", "uniform") or getattr(layer, "groups", 1) != 1:
            continue
        hessian = _input_hessian(model, layer, batches)
        groups = _GroupScales(layer.weight.shape[0], fmt) if fmt.kind == "ternary" else _UniformGroups(fmt)
        layer.weight.copy_(_quantize_columns(layer.weight, hessian, fmt.group_size, groups))
        if fmt.kind == "uniform":
            layer.fix_grid(groups.grid_layout(layer.uniform_grid.shape))


def _layer_columns(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as rows of the reduction axis: [samples, C*R*S] (conv) or [samples, C]."""
    if isinstance(layer, QuantConv2d):
        patches = F.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])
    return x.reshape(-1, x.shape[-1])


def _input_hessian(model: nn.Module, layer: nn.Module, batches: Iterable) -> torch.Tensor:
    size = layer.weight[0].numel()
    hessian = torch.zeros(size, size, dtype=torch.float64, device=layer.weight.device)
    count = 0

    def capture(_module, args):
        nonlocal hessian, count
        columns = _layer_columns(layer, args[0].detach()).double()
        hessian += columns.T @ columns
        count += columns.shape[0]
        raise _InputsCaptured

    handle = layer.register_forward_pre_hook(capture)
    try:
        with eval_mode(model):
            for images in batch_images(batches, model):
                try:
                    model(images)
                except _InputsCaptured:
                    pass
    finally:
        handle.remove()
    if count == 0:
        raise ValueError("the calibration set is empty: give it at least one batch of images")
    return hessian / count


def _column_order(shape: torch.Size) -> torch.Tensor:
    """Columns of the flattened [C, R, S] reduction axis ordered (r, s, c): groups contiguous."""
    channels, positions = shape[1], int(torch.Size(shape[2:]).numel())
    return torch.arange(channels * positions).reshape(channels, positions).T.reshape(-1)


def _group_starts(shape: torch.Size, group_size: GroupSize) -> list[tuple[int, int]]:
    """(first column, column count) of each group in the (r, s, c) column order."""
    columns = int(torch.Size(shape[1:]).numel())
    if group_size in ("filter", "layer"):
        return [(0, columns)]
    channels = shape[1]
    n = min(group_size, channels)
    return [(p * channels + c, min(n, channels - c)) for p in range(columns // channels) for c in range(0, channels, n)]


def _inverse_hessian_factor(hessian: torch.Tensor) -> torch.Tensor:
    """Upper Cholesky factor of the damped inverse Hessian, as GPTQ's update uses it."""
    hessian = hessian.clone()
    dead = hessian.diagonal() == 0
    hessian[dead, dead] = 1.0
    hessian.diagonal().add_(DAMPING * hessian.diagonal().mean())
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(hessian))
    return torch.linalg.cholesky(inverse, upper=True)


def _quantize_columns(weight: torch.Tensor, hessian: torch.Tensor, group_size: GroupSize, quantizer) -> torch.Tensor:
    """GPTQ over the columns in group order; ``quantizer`` fits each group as it starts and rounds columns."""
    order = _column_order(weight.shape)
    w = weight.detach().float().reshape(weight.shape[0], -1)[:, order].clone()
    factor = _inverse_hessian_factor(hessian[order[:, None], order].float())
    quantized = torch.zeros_like(w)
    starts = dict(_group_starts(weight.shape, group_size))
    for block in range(0, w.shape[1], BLOCK_COLUMNS):
        end = min(block + BLOCK_COLUMNS, w.shape[1])
        errors = torch.zeros(w.shape[0], end - block, device=w.device)
        for j in range(block, end):
            if j in starts:
                quantizer.fit(w[:, j:j + starts[j]])
            column = w[:, j]
            q = quantizer.round(column)
            quantized[:, j] = q
            errors[:, j - block] = (column - q) / factor[j, j]
            w[:, j + 1:end] -= errors[:, j - block, None] * factor[j, j + 1:end][None, :]
        w[:, end:] -= errors @ factor[block:end, end:]  # the block's errors, pushed on in one product
    restored = torch.empty_like(quantized)
    restored[:, order] = quantized
    return restored.reshape(weight.shape).to(weight.dtype)


class _GroupScales:
    """The scales of the ternary group being quantized, per output row, and nearest rounding with them."""

    def __init__(self, rows: int, fmt: WeightFormat):
        self.rows, self.shared, self.solver = rows, fmt.group_size == "layer", fmt.solver

    def fit(self, block: torch.Tensor) -> None:
        _, pos, neg = solve_groups(block.reshape(1, -1) if self.shared else block, self.solver)
        self.pos = pos.expand(self.rows)
        self.neg = self.pos if neg is None else neg.expand(self.rows)

    def round(self, column: torch.Tensor) -> torch.Tensor:
        zero = torch.zeros_like(column)
        return torch.where(column > self.pos / 2, self.pos, torch.where(column < -self.neg / 2, -self.neg, zero))


class _UniformGroups:
    """The uniform grid of the group being quantized, per output row; every group's grid is kept, in
    column order (kernel position, then channel group), for the layer to fix."""

    def __init__(self, fmt: WeightFormat):
        self.fmt, self.shared, self.grids = fmt, fmt.group_size == "layer", []

    def fit(self, block: torch.Tensor) -> None:
        self.grids.append(fit_grid(block.reshape(1, -1) if self.shared else block, self.fmt.bits, self.fmt.scale_dtype))

    def round(self, column: torch.Tensor) -> torch.Tensor:
        return round_to_grid(column, self.grids[-1], self.fmt.bits)

    def grid_layout(self, shape: torch.Size) -> torch.Tensor:
        """The grids as the layer holds them: [2, K, *kernel, G] (integer N), [2, K] or [2, 1]."""
        return torch.stack(self.grids, dim=-1).reshape(shape)
