"""Per-group ternarization of weight tensors: W_g ~= alpha_g * t_g with t_g in {-1, 0, +1}^N.

Groups are N consecutive weights along the input-channel axis (dim 1) of one output filter at one
kernel position; a last, shorter group takes the remainder when C is not a multiple of N, and N
larger than C means one group per channel vector. ``"filter"`` makes the whole filter one group and
``"layer"`` the whole tensor (TWN-style references). Every solver works on all groups at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

import torch

from ..checks import is_int

GroupSize = Union[int, Literal["filter", "layer"]]
SOLVERS = ("exact", "twn", "asymmetric")
NAMED_GROUPS = ("filter", "layer")
TWN_THRESHOLD_FACTOR = 0.7


def validate_group_size(group_size: object) -> GroupSize:
    """Return ``group_size`` if it is a positive int, 'filter' or 'layer'; raise otherwise."""
    if isinstance(group_size, str) and group_size in NAMED_GROUPS:
        return group_size  # type: ignore[return-value]
    if not is_int(group_size) or group_size < 1:
        raise ValueError(
            f"group_size must be a positive integer, 'filter' or 'layer', got {group_size!r}"
        )
    return group_size


def validate_solver(solver: object) -> str:
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    return solver  # type: ignore[return-value]


def effective_group_size(shape: torch.Size | tuple[int, ...], group_size: GroupSize) -> int:
    """Weights per (full) group for a tensor of ``shape``: N capped at C, or filter/layer size."""
    if group_size == "layer":
        return int(torch.Size(shape).numel())
    if group_size == "filter":
        return int(torch.Size(shape[1:]).numel())
    return min(int(group_size), int(shape[1]))


def groups_per_filter(shape: torch.Size | tuple[int, ...], group_size: GroupSize) -> int:
    """Number of groups (hence scale multiplies) inside one output filter's dot product."""
    if group_size in NAMED_GROUPS:
        return 1
    n = effective_group_size(shape, group_size)
    kernel_positions = int(torch.Size(shape[2:]).numel())
    return kernel_positions * -(-int(shape[1]) // n)


@dataclass
class TernaryWeights:
    """Ternary codes and per-group scales of one weight tensor.

    ``scales`` has one entry per group: shape [K, G, *kernel] for integer group sizes (G groups
    along C), [K] for 'filter' and [] for 'layer'. The asymmetric solver adds ``neg_scales`` of
    the same shape, the magnitude used for the -1 codes.
    """

    codes: torch.Tensor
    scales: torch.Tensor
    group_size: GroupSize
    solver: str
    neg_scales: torch.Tensor | None = None

    @property
    def effective_group_size(self) -> int:
        return effective_group_size(self.codes.shape, self.group_size)

    def dequantize(self) -> torch.Tensor:
        codes = self.codes.to(self.scales.dtype)
        pos = expand_scales(self.scales, self.codes.shape, self.group_size)
        if self.neg_scales is None:
            return codes * pos
        neg = expand_scales(self.neg_scales, self.codes.shape, self.group_size)
        return torch.where(codes > 0, pos, neg) * codes


def ternarize(weight: torch.Tensor, group_size: GroupSize, solver: str = "exact") -> TernaryWeights:
    """Ternarize ``weight`` ([K, C, ...]) in groups of ``group_size`` along dim 1 with ``solver``."""
    group_size = validate_group_size(group_size)
    validate_solver(solver)
    if weight.dim() < 2:
        raise ValueError(f"weight must have an output and an input dimension, got shape {tuple(weight.shape)}")
    if not torch.isfinite(weight).all():
        raise ValueError("weight holds NaN or Inf values; ternarization needs finite weights")
    w = weight.detach().float()
    groups, valid = to_groups(w, group_size)
    codes, pos_alpha, neg_alpha = solve_groups(groups, solver, valid)
    return TernaryWeights(
        codes=from_groups(codes, w.shape, group_size),
        scales=_scale_layout(pos_alpha, w.shape, group_size),
        group_size=group_size,
        solver=solver,
        neg_scales=None if neg_alpha is None else _scale_layout(neg_alpha, w.shape, group_size),
    )


def solve_groups(
    groups: torch.Tensor, solver: str, valid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Ternary codes and scales for a [..., N] stack of groups (``valid`` masks padding).

    Returns int8 codes, the scale of the +1 codes and, for the asymmetric solver only, the scale
    of the -1 codes; the other solvers use one scale for both signs.
    """
    if solver == "asymmetric":
        pos_keep, pos_alpha = _solve_exact(groups.clamp(min=0), valid)
        neg_keep, neg_alpha = _solve_exact((-groups).clamp(min=0), valid)
        return pos_keep.to(torch.int8) - neg_keep.to(torch.int8), pos_alpha, neg_alpha
    solve = _solve_exact if solver == "exact" else _solve_twn
    keep, alpha = solve(groups.abs(), valid)
    return (torch.sign(groups) * keep).to(torch.int8), alpha, None


def _solve_exact(magnitude: torch.Tensor, valid: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Optimal support per group: keep the k largest |w| maximising S_k^2 / k; alpha = S_k / k.

    Along a run of equal magnitudes S_k^2 / k is quasi-convex, so the optimum keeps all or none of
    a tie: thresholding at the k*-th largest magnitude is exact.
    """
    if valid is not None:
        magnitude = magnitude * valid
    sorted_mag = magnitude.sort(dim=-1, descending=True).values
    cumsum = sorted_mag.cumsum(dim=-1)
    k = torch.arange(1, magnitude.shape[-1] + 1, dtype=magnitude.dtype, device=magnitude.device)
    best = (cumsum.square() / k).argmax(dim=-1, keepdim=True)
    threshold = sorted_mag.gather(-1, best)
    keep = (magnitude >= threshold) & (magnitude > 0)
    return keep, _mean_kept(magnitude, keep)


def _solve_twn(magnitude: torch.Tensor, valid: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """TWN rule: threshold 0.7 * mean|w| of the group; alpha is the mean of the kept magnitudes."""
    if valid is None:
        mean = magnitude.mean(dim=-1)
    else:
        magnitude = magnitude * valid
        mean = magnitude.sum(dim=-1) / valid.sum(dim=-1).clamp(min=1)
    keep = magnitude > (TWN_THRESHOLD_FACTOR * mean).unsqueeze(-1)
    return keep, _mean_kept(magnitude, keep)


def _mean_kept(magnitude: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The least-squares scale for a fixed support: the mean magnitude of the kept weights."""
    return (magnitude * keep).sum(dim=-1) / keep.sum(dim=-1).clamp(min=1)


def to_groups(w: torch.Tensor, group_size: GroupSize) -> tuple[torch.Tensor, torch.Tensor | None]:
    """View ``w`` as [..., G, N] groups, zero padded, and a mask of the real entries (None: all)."""
    if group_size == "layer":
        return w.reshape(1, -1), None
    if group_size == "filter":
        return w.reshape(w.shape[0], -1), None
    channels = w.shape[1]
    n = min(group_size, channels)
    num_groups = -(-channels // n)
    channels_last = w.movedim(1, -1)  # [K, *kernel, C]
    shape = (*channels_last.shape[:-1], num_groups, n)
    pad = num_groups * n - channels
    if not pad:  # contiguous groups: sorting strided memory costs about twice as much
        return channels_last.reshape(shape).contiguous(), None
    valid = torch.ones_like(channels_last, dtype=torch.bool)
    channels_last = torch.nn.functional.pad(channels_last, (0, pad))
    valid = torch.nn.functional.pad(valid, (0, pad))
    return channels_last.reshape(shape), valid.reshape(shape)


def from_groups(grouped: torch.Tensor, shape: torch.Size, group_size: GroupSize) -> torch.Tensor:
    """Inverse of :func:`to_groups` for per-weight tensors (codes)."""
    if group_size in NAMED_GROUPS:
        return grouped.reshape(shape)
    channels = shape[1]
    flat = grouped.reshape(*grouped.shape[:-2], -1)[..., :channels]  # [K, *kernel, C]
    return flat.movedim(-1, 1).contiguous()


def _scale_layout(alpha: torch.Tensor, shape: torch.Size, group_size: GroupSize) -> torch.Tensor:
    """Per-group scales as [K, G, *kernel] (int N), [K] (filter) or [] (layer)."""
    if group_size == "layer":
        return alpha.reshape(())
    if group_size == "filter":
        return alpha.reshape(shape[0])
    return alpha.movedim(-1, 1).contiguous()  # [K, *kernel, G] -> [K, G, *kernel]


def expand_scales(scales: torch.Tensor, shape: torch.Size, group_size: GroupSize) -> torch.Tensor:
    """Broadcast per-group scales back to one scale per weight."""
    if group_size == "layer":
        return scales.expand(shape)
    if group_size == "filter":
        return scales.reshape(-1, *([1] * (len(shape) - 1))).expand(shape)
    n = effective_group_size(shape, group_size)
    return scales.repeat_interleave(n, dim=1)[:, : shape[1]]
