"""Plain numpy references for the kernels: unpack the codes to int8 and sum each group in int64.

Slow and obviously correct; the tests hold the Numba kernels to them.
"""

from __future__ import annotations

import numpy as np

from .codes import unpack_codes


def reference_group_sums(x: np.ndarray, codes: np.ndarray, channels: int, group_size: int) -> np.ndarray:
    """Exact integer group sums [M, K, positions * G] of activations ``x`` [M, L] and packed ``codes``."""
    rows, length = x.shape[0], x.shape[1]
    positions = length // channels
    groups = -(-channels // group_size)
    pad = groups * group_size - channels
    weights = unpack_codes(codes, length).astype(np.int64).reshape(-1, positions, channels)
    inputs = x.astype(np.int64).reshape(rows, positions, channels)
    weights = np.pad(weights, ((0, 0), (0, 0), (0, pad))).reshape(-1, positions, groups, group_size)
    inputs = np.pad(inputs, ((0, 0), (0, 0), (0, pad))).reshape(rows, positions, groups, group_size)
    return np.einsum("kpgn,mpgn->mkpg", weights, inputs).reshape(rows, weights.shape[0], positions * groups)


def reference_ternary_gemm(
    x: np.ndarray, codes: np.ndarray, scales: np.ndarray, bias: np.ndarray, act_scale: float, channels: int,
    group_size: int,
) -> np.ndarray:
    """float64 [M, K]: s_x * sum_g scale_g * group_sum_g + bias."""
    sums = reference_group_sums(x, codes, channels, group_size)
    weighted = (sums * scales.astype(np.float64)[np.newaxis]).sum(axis=-1)
    return weighted * float(act_scale) + bias.astype(np.float64)


def reference_int8_gemm(
    x: np.ndarray, weights: np.ndarray, scales: np.ndarray, bias: np.ndarray, act_scale: float
) -> np.ndarray:
    """float64 [M, K]: exact int64 dot products times the per-filter scale and the activation scale."""
    sums = x.astype(np.int64) @ weights.astype(np.int64).T
    return sums * (scales.astype(np.float64) * float(act_scale)) + bias.astype(np.float64)
