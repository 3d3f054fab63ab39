"""8-bit GEMM for the layers kept at int8 weights (first conv, last linear): int8 weights times
integer activations, summed exactly in int32, then one fp32 scale per output filter, applied in the
integer path's float order (see :mod:`.ternary_gemm`).

Overflow: |sum| <= L * 127 * 255, which fits int32 for L up to 66,311 weights per filter; the
loader rejects larger layers (see :mod:`.packed_checks`). Keeping these two layers integer too means
the whole network runs on integer activations, as the fake-quant model describes it.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .operands import check_activations, check_operand


@njit(cache=True)
def _int8_dot(weights_row, x_row):
    total = np.int32(0)
    for j in range(np.uint64(x_row.shape[0])):  # unsigned: no wrap-around guard, so it vectorises
        total = np.int32(total + np.int32(weights_row[j]) * np.int32(x_row[j]))
    return total


@njit(cache=True, parallel=True)
def _int8_gemm_kernel(x, weights, scales, bias, act_scale, out):
    for k in prange(weights.shape[0]):
        for m in range(x.shape[0]):  # a ternary layer's epilogue with one group: fl(fl(fl(S * alpha) * s_x) + b)
            out[m, k] = np.float32(_int8_dot(weights[k], x[m])) * scales[k] * act_scale + bias[k]


def int8_gemm(x: np.ndarray, weights: np.ndarray, scales: np.ndarray, bias: np.ndarray, act_scale: float) -> np.ndarray:
    """fp32 [M, K] outputs of integer activations ``x`` [M, L] against int8 ``weights`` [K, L].

    ``scales`` [K] are the per-output-filter weight scales (any folded BatchNorm included).
    """
    check_activations(x)
    rows = weights.shape[0]
    check_operand(weights, "weights", np.int8, (rows, x.shape[1]))
    check_operand(scales, "scales", np.float32, (rows,))
    check_operand(bias, "bias", np.float32, (rows,))
    out = np.empty((x.shape[0], rows), dtype=np.float32)
    _int8_gemm_kernel(x, weights, scales, bias, np.float32(act_scale), out)
    return out
