"""Learnable stand-ins for a layer's quantizers while block reconstruction trains it.

Ternary weights: each weight is a soft code floor + h(v) in [-1, 1], where floor is -1 or 0 and h is
AdaRound's rectified sigmoid, times a learned per-group scale (alpha0 * exp(s), so it stays positive
and its step is relative). A penalty drives h to 0 or 1, so the codes end on {-1, 0, +1} and the
layer's weight becomes alpha * t, which the per-group solvers reproduce exactly.

Uniform weights (the baseline formats): the same soft rounding between a weight's two neighbouring
levels of its group's grid (AdaRound itself), with the group's scale learned the same way and its
zero point kept; the layer keeps the learned grid, as GPTQ-style rounding leaves it.

Activations: LSQ-style rounding whose step size gets a gradient, with QDrop's random drop.
"""

from __future__ import annotations

import torch
from torch import nn

from .scale_storage import stored_scales
from .ternary import GroupSize, expand_scales, from_groups, ternarize, to_groups
from .uniform import fit_grid

# AdaRound's stretch of the sigmoid beyond [0, 1], so the rectified value reaches 0 and 1 exactly.
STRETCH_LOW, STRETCH_HIGH = -0.1, 1.1
TINY_SCALE = 1e-12  # floor for dividing by a group scale of an all-zero group


def _rectified_sigmoid(logits: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(logits) * (STRETCH_HIGH - STRETCH_LOW) + STRETCH_LOW, 0, 1)


def _inverse_rectified_sigmoid(rest: torch.Tensor) -> torch.Tensor:
    return -torch.log((STRETCH_HIGH - STRETCH_LOW) / (rest - STRETCH_LOW) - 1)


class SoftTernaryWeights(nn.Module):
    """Soft codes and learned group scales of one ternary weight tensor, started at ``weight``.

    The scales start from the solver's per-group solution; each weight's code starts at its
    value in units of that scale, clipped to [-1, 1], so the soft weights start at the FP32
    weights clipped to +-alpha.
    """

    def __init__(self, weight: torch.Tensor, group_size: GroupSize, solver: str):
        super().__init__()
        self.shape, self.group_size = weight.shape, group_size
        start = ternarize(weight, group_size, solver)
        self.register_buffer("pos_start", start.scales)
        self.register_buffer("neg_start", start.neg_scales if start.neg_scales is not None else start.scales)
        self.asymmetric = start.neg_scales is not None
        self.log_pos = nn.Parameter(torch.zeros_like(start.scales))
        self.log_neg = nn.Parameter(torch.zeros_like(start.scales)) if self.asymmetric else None
        w = weight.detach().float()
        scale = torch.where(w >= 0, self._expand(self.pos_start), self._expand(self.neg_start))
        ratio = (w / scale.clamp(min=TINY_SCALE)).clamp(-1, 1)
        floor = torch.floor(ratio).clamp(-1, 0)
        self.register_buffer("floor", floor)
        self.logits = nn.Parameter(_inverse_rectified_sigmoid(ratio - floor))

    def _expand(self, scales: torch.Tensor) -> torch.Tensor:
        return expand_scales(scales, self.shape, self.group_size)

    def scales(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-group scales of the +1 and the -1 codes (the same tensor unless asymmetric)."""
        pos = self.pos_start * torch.exp(self.log_pos)
        return pos, (self.neg_start * torch.exp(self.log_neg) if self.asymmetric else pos)

    def codes(self, hard: bool) -> torch.Tensor:
        """Soft codes in [-1, 1], or the hard codes they round to (h >= 0.5, i.e. logits >= 0)."""
        rest = (self.logits >= 0).to(self.floor.dtype) if hard else _rectified_sigmoid(self.logits)
        return self.floor + rest

    def weight(self, hard: bool = False) -> torch.Tensor:
        codes = self.codes(hard)
        pos, neg = self.scales()
        if not self.asymmetric:
            return self._expand(pos) * codes
        return torch.where(codes > 0, self._expand(pos), self._expand(neg)) * codes

    def rounding_penalty(self, exponent: float) -> torch.Tensor:
        """AdaRound's regulariser: zero only where every code sits on 0 or 1 above its floor."""
        return _rounding_penalty(self.logits, exponent)

    def scale_parameters(self) -> list[nn.Parameter]:
        return [p for p in (self.log_pos, self.log_neg) if p is not None]

    @torch.no_grad()
    def commit(self, layer: nn.Module) -> None:
        """The hard codes times the scales as the layer's weight (its solver finds them again)."""
        layer.weight.copy_(self.weight(hard=True).to(layer.weight.dtype))


class SoftUniformWeights(nn.Module):
    """Soft levels and learned group scales of one uniform ``bits``-bit weight tensor, started from
    ``grid`` ([2, *groups]: scales, zero points; fitted to ``weight`` if None): each weight starts
    at its own value, between the two levels around it."""

    def __init__(self, weight: torch.Tensor, bits: int, group_size: GroupSize, scale_dtype: str,
                 grid: torch.Tensor | None = None):
        super().__init__()
        self.shape, self.group_size, self.bits, self.scale_dtype = weight.shape, group_size, bits, scale_dtype
        groups, _ = to_groups(weight.detach().float(), group_size)
        grid = fit_grid(groups, bits, scale_dtype) if grid is None else grid.float()
        self.register_buffer("scale_start", grid[0])
        self.register_buffer("zero", grid[1])
        self.log_scale = nn.Parameter(torch.zeros_like(grid[0]))
        ratio = groups / grid[0].unsqueeze(-1).clamp(min=TINY_SCALE)
        floor = torch.floor(ratio)
        self.register_buffer("floor", floor)
        self.logits = nn.Parameter(_inverse_rectified_sigmoid(ratio - floor))

    def scale(self) -> torch.Tensor:
        return self.scale_start * torch.exp(self.log_scale)

    def weight(self, hard: bool = False, scale: torch.Tensor | None = None) -> torch.Tensor:
        rest = (self.logits >= 0).to(self.floor.dtype) if hard else _rectified_sigmoid(self.logits)
        zero = self.zero.unsqueeze(-1)
        levels = torch.clamp(self.floor + rest + zero, 0, 2**self.bits - 1)
        scale = self.scale() if scale is None else scale
        return from_groups((levels - zero) * scale.unsqueeze(-1), self.shape, self.group_size)

    def rounding_penalty(self, exponent: float) -> torch.Tensor:
        return _rounding_penalty(self.logits, exponent)

    def scale_parameters(self) -> list[nn.Parameter]:
        return [self.log_scale]

    @torch.no_grad()
    def commit(self, layer: nn.Module) -> None:
        """The hard levels on the learned scales as stored (fp16, int8 multiples) as the layer's
        weight, and that grid fixed in the layer."""
        scale = stored_scales(self.scale(), self.scale_dtype)
        layer.weight.copy_(self.weight(hard=True, scale=scale).to(layer.weight.dtype))
        layer.fix_grid(torch.stack([scale, self.zero]).to(layer.uniform_grid.dtype))


def _rounding_penalty(logits: torch.Tensor, exponent: float) -> torch.Tensor:
    """AdaRound's regulariser: zero only where every weight sits on the level below or above it."""
    return (1 - (2 * _rectified_sigmoid(logits) - 1).abs().pow(exponent)).sum()


def learned_fake_quantize(x: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Round to the integer grid and saturate, with LSQ's gradient to ``scale`` (rounding passes
    straight through, saturation does not)."""
    scaled = x / scale
    rounded = scaled + (torch.round(scaled) - scaled).detach()
    return torch.clamp(rounded, qmin, qmax) * scale


def drop_quantization(x: torch.Tensor, quantized: torch.Tensor, drop_prob: float,
                      generator: torch.Generator) -> torch.Tensor:
    """QDrop: each element keeps its float value with probability ``drop_prob``."""
    if drop_prob == 0:
        return quantized
    keep_float = (torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) < drop_prob).to(x.dtype)
    return quantized + keep_float * (x - quantized)  # a select as arithmetic: several times faster than where on CPUs
