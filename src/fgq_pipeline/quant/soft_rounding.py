"""Learnable stand-ins for a layer's quantizers while block reconstruction trains it.

Weights: each weight is a soft code floor + h(v) in [-1, 1], where floor is -1 or 0 and h is
AdaRound's rectified sigmoid, times a learned per-group scale (alpha0 * exp(s), so it stays positive
and its step is relative). A penalty drives h to 0 or 1, so the codes end on {-1, 0, +1} and the
layer's weight becomes alpha * t, which the per-group solvers reproduce exactly.

Activations: LSQ-style rounding whose step size gets a gradient, with QDrop's random drop.
"""

from __future__ import annotations

import torch
from torch import nn

from .ternary import GroupSize, expand_scales, ternarize

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
        return (1 - (2 * _rectified_sigmoid(self.logits) - 1).abs().pow(exponent)).sum()


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
