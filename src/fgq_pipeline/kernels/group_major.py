"""Small-batch ternary GEMV for groups of 8 to 128 weights, on codes regrouped once at load.

In the packed order a group of N weights is N / 4 consecutive code bytes, so a loop over one
group is short and its sum ends in a horizontal reduction; at N=64 that ran at a fifth of the
N=4 byte path's speed. Here the codes are regrouped ("group-major") when the network loads:
``codes[k, i, g]`` is byte i of group g of output k, so for fixed (k, i) the bytes of all groups are
contiguous and the innermost loop runs across groups, one independent int16 group sum per lane,
with no reduction. The activations get the same treatment per call (``planes[m, i, q, g]`` =
x[m, g * N + 4 * i + q]), which is cheap at small batches. Groups are padded with zero codes to a
multiple of GROUP_PADDING so the vector loop has no scalar remainder. Measured in README.md.

Why int16 group sums are exact: |sum| <= N * 255 <= 32,640 < 2^15 for N <= MAX_GROUP_SIZE.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from .codes import CODES_PER_BYTE
from .operands import check_activations
from .ternary_gemm import FLOAT_FASTMATH, INT16_GROUP_SIZE

MIN_GROUP_SIZE = 2 * CODES_PER_BYTE  # N=4 (one byte per group) is faster on the byte path
MAX_GROUP_SIZE = INT16_GROUP_SIZE  # int16 group sums
GROUP_PADDING = 32  # 64 left a quarter of AlexNet fc6's N=64 lanes as padding and ran slower


@njit(cache=True, parallel=True, fastmath=FLOAT_FASTMATH)
def _group_major_kernel(planes, codes, scales, bias, act_scale, out):
    rows = planes.shape[0]
    outputs, steps, padded_groups = codes.shape
    lanes = np.uint64(padded_groups)
    for k in prange(outputs):
        group_sums = np.empty(padded_groups, dtype=np.int16)
        scales_row = scales[k]
        for m in range(rows):
            group_sums[:] = 0
            for i in range(steps):
                code_bytes = codes[k, i]
                x0, x1, x2, x3 = planes[m, i, 0], planes[m, i, 1], planes[m, i, 2], planes[m, i, 3]
                for g in range(lanes):
                    byte = np.int8(code_bytes[g])
                    group_sums[g] = np.int16(
                        group_sums[g]
                        + np.int16(np.int8(byte << 6) >> 6) * np.int16(x0[g])
                        + np.int16(np.int8(byte << 4) >> 6) * np.int16(x1[g])
                        + np.int16(np.int8(byte << 2) >> 6) * np.int16(x2[g])
                        + np.int16(byte >> 6) * np.int16(x3[g])
                    )
            acc = np.float32(0.0)
            for g in range(lanes):
                acc += scales_row[g] * np.float32(group_sums[g])
            out[m, k] = acc * act_scale + bias[k]


@dataclass(frozen=True)
class GroupMajorCodes:
    """A ternary layer's codes [K, N / 4, padded groups] and fp32 scales [K, padded groups]."""

    codes: np.ndarray
    scales: np.ndarray
    group_size: int
    groups: int

    @staticmethod
    def supports(channels: int, group_size: int) -> bool:
        """Whole groups of 8..128 weights, a multiple of 4 (a whole number of code bytes each)."""
        return (MIN_GROUP_SIZE <= group_size <= MAX_GROUP_SIZE and group_size % CODES_PER_BYTE == 0
                and channels % group_size == 0)

    @classmethod
    def from_packed(cls, codes: np.ndarray, scales: np.ndarray, channels: int, group_size: int) -> GroupMajorCodes:
        """Regroup packed codes [K, L / 4] and fp32 scales [K, L / N] (see :mod:`.ternary_gemm`)."""
        if not cls.supports(channels, group_size):
            raise ValueError(f"group-major codes need whole groups of {MIN_GROUP_SIZE}..{MAX_GROUP_SIZE} weights, "
                             f"a multiple of {CODES_PER_BYTE}; got group_size={group_size}, channels={channels}")
        outputs, groups = scales.shape
        steps = group_size // CODES_PER_BYTE
        padded = -(-groups // GROUP_PADDING) * GROUP_PADDING
        regrouped = np.zeros((outputs, steps, padded), dtype=np.uint8)
        regrouped[:, :, :groups] = codes.reshape(outputs, groups, steps).transpose(0, 2, 1)
        padded_scales = np.zeros((outputs, padded), dtype=np.float32)
        padded_scales[:, :groups] = scales
        return cls(regrouped, padded_scales, group_size, groups)

    def gemm(self, x: np.ndarray, bias: np.ndarray, act_scale: float) -> np.ndarray:
        """fp32 [M, K] outputs for integer activations ``x`` [M, L], as :func:`.ternary_gemm` gives them."""
        check_activations(x)
        outputs, steps, padded = self.codes.shape
        if x.shape[1] != self.groups * self.group_size:
            raise ValueError(f"activations have {x.shape[1]} columns, the layer takes {self.groups * self.group_size}")
        planes = np.zeros((x.shape[0], steps, CODES_PER_BYTE, padded), dtype=x.dtype)
        planes[..., :self.groups] = x.reshape(x.shape[0], self.groups, steps, CODES_PER_BYTE).transpose(0, 2, 3, 1)
        out = np.empty((x.shape[0], outputs), dtype=np.float32)
        _group_major_kernel(planes, self.codes, self.scales, bias, np.float32(act_scale), out)
        return out
