"""Uniform 2-, 3- and 4-bit weights in the ternary layers' groups: the baseline ternary FGQ has to beat
at equal bits per weight.

Each group (N consecutive input channels at one kernel position, a whole filter, or the layer) gets
an asymmetric grid of 2^b levels: a scale and an integer zero point. Its range is the group's
min/max (zero included) shrunk by the factor, among RANGE_CANDIDATES, with the least squared error:
at 2 bits a plain min/max range spends its four levels on outliers. A layer's grid can be fixed
(error-compensating rounding fits it group by group and fixes it); an unfixed grid is fitted to the
weights in every pass, as the ternary scales are.
"""

from __future__ import annotations

import torch

from .scale_storage import stored_scales
from .ternary import GroupSize, from_groups, to_groups

UNIFORM_BITS = (2, 3, 4)
RANGE_CANDIDATES = 20  # shrink factors 1, 0.95, ..., 0.05 of the min/max range


def validate_weight_bits(bits: object) -> int:
    if isinstance(bits, bool) or bits not in UNIFORM_BITS:
        raise ValueError(f"uniform weight bits must be one of {UNIFORM_BITS}, got {bits!r}")
    return bits  # type: ignore[return-value]


def grid_shape(weight_shape: torch.Size | tuple[int, ...], group_size: GroupSize) -> torch.Size:
    """Shape of one value per group: [K, *kernel, G] for integer N, [K] per filter, [1] per layer."""
    groups, _ = to_groups(torch.empty(weight_shape, device="meta"), group_size)
    return groups.shape[:-1]


def fit_grid(groups: torch.Tensor, bits: int, scale_dtype: str = "fp32") -> torch.Tensor:
    """[2, ...]: the scale and zero point of each group of ``groups`` [..., N] (zero padding is exact)."""
    levels = 2**bits - 1
    low, high = groups.amin(dim=-1).clamp(max=0), groups.amax(dim=-1).clamp(min=0)
    best_grid, best_error = None, None
    for shrink in torch.linspace(1.0, 1.0 / RANGE_CANDIDATES, RANGE_CANDIDATES).tolist():
        scale = stored_scales(((high - low) * shrink / levels).clamp(min=1e-12), scale_dtype)
        grid = torch.stack([scale, torch.round(-low * shrink / scale).clamp(0, levels)])
        error = (round_to_grid(groups, grid, bits) - groups).square().sum(dim=-1)
        if best_grid is None:
            best_grid, best_error = grid, error
        else:
            better = error < best_error
            best_grid = torch.where(better, grid, best_grid)
            best_error = torch.minimum(error, best_error)
    return best_grid


def round_to_grid(values: torch.Tensor, grid: torch.Tensor, bits: int) -> torch.Tensor:
    """``values`` [..., N] (or [...] with one value per group) rounded to their groups' grids, dequantized."""
    scale, zero = grid[0], grid[1]
    if values.dim() > scale.dim():
        scale, zero = scale.unsqueeze(-1), zero.unsqueeze(-1)
    return (torch.clamp(torch.round(values / scale) + zero, 0, 2**bits - 1) - zero) * scale


def quantize_uniform(weight: torch.Tensor, bits: int, group_size: GroupSize, scale_dtype: str = "fp32",
                     grid: torch.Tensor | None = None) -> torch.Tensor:
    """``weight`` on its groups' b-bit grids (fitted here unless ``grid`` is given), dequantized."""
    groups, _ = to_groups(weight.detach().float(), group_size)
    grid = fit_grid(groups, bits, scale_dtype) if grid is None else grid
    return from_groups(round_to_grid(groups, grid, bits), weight.shape, group_size)
