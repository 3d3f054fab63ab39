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

from .modules import QuantConv2d
from .surgery import quant_layers
from .ternary import GroupSize, solve_groups

DAMPING = 0.01  # fraction of the mean Hessian diagonal added to it, as in GPTQ


class _InputsCaptured(Exception):
    """Stops a forward pass once the layer being quantized has seen its input."""


@torch.no_grad()
def gptq_ternarize(model: nn.Module, batches: Iterable) -> None:
    """Replace every ternary layer's weights by error-compensated ternary weights, in order."""
    for _, layer in quant_layers(model):
        if layer.weight_format.kind != "ternary" or getattr(layer, "groups", 1) != 1:
            continue
        hessian = _input_hessian(model, layer, batches)
        fmt = layer.weight_format
        layer.weight.copy_(_quantize_columns(layer.weight, hessian, fmt.group_size, fmt.solver))


def _layer_columns(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as rows of the reduction axis: [samples, C*R*S] (conv) or [samples, C]."""
    if isinstance(layer, QuantConv2d):
        patches = F.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])
    return x.reshape(-1, x.shape[-1])


def _input_hessian(model: nn.Module, layer: nn.Module, batches: Iterable) -> torch.Tensor:
    hessian = torch.zeros(layer.weight[0].numel(), layer.weight[0].numel(), dtype=torch.float64)
    count = 0

    def capture(_module, args):
        nonlocal hessian, count
        columns = _layer_columns(layer, args[0].detach()).double()
        hessian += columns.T @ columns
        count += columns.shape[0]
        raise _InputsCaptured

    handle = layer.register_forward_pre_hook(capture)
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            try:
                model(batch[0] if isinstance(batch, (list, tuple)) else batch)
            except _InputsCaptured:
                pass
    finally:
        handle.remove()
        model.train(was_training)
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


def _quantize_columns(weight: torch.Tensor, hessian: torch.Tensor, group_size: GroupSize, solver: str) -> torch.Tensor:
    order = _column_order(weight.shape)
    w = weight.detach().double().reshape(weight.shape[0], -1)[:, order].clone()
    factor = _inverse_hessian_factor(hessian[order][:, order])
    quantized = torch.zeros_like(w)
    for start, size in _group_starts(weight.shape, group_size):
        block = w[:, start:start + size]
        groups = block.reshape(1, -1) if group_size == "layer" else block
        _, pos, neg = solve_groups(groups, solver)
        pos = pos.expand(w.shape[0]) if group_size == "layer" else pos
        neg = pos if neg is None else (neg.expand(w.shape[0]) if group_size == "layer" else neg)
        for j in range(start, start + size):
            column = w[:, j]
            q = torch.where(column > pos / 2, pos, torch.where(column < -neg / 2, -neg, torch.zeros_like(column)))
            quantized[:, j] = q
            error = (column - q) / factor[j, j]
            w[:, j + 1:] -= error[:, None] * factor[j, j + 1:][None, :]
    restored = torch.empty_like(quantized)
    restored[:, order] = quantized
    return restored.reshape(weight.shape).to(weight.dtype)
