"""Ternary GEMV/GEMM: integer activations times packed 2-bit codes, one float multiply per group.

For output k and input row m: out[m, k] = s_x * sum_g alpha[k, g] * (sum_{j in g} t[k, j] * x[m, j])
+ bias[k]. Inside a group the codes only add or subtract activations, so the group sum is exact in
int32; it is converted to float once and multiplied by the group scale; groups accumulate in fp32.

The float arithmetic follows one fixed order, the integer path's contract (kernels README, "Float
order"), so that the torch twin in :mod:`.torch_twin` reproduces every output bit for bit:
acc = 0; for each group in (position, channel group) order: acc = fl(acc + fl(alpha_g * S_g));
out = fl(fl(acc * s_x) + bias). No fastmath: no reassociation, no fused multiply-add.

Why int32 cannot overflow: |x| <= 255 (uint8) or 127 (int8), so |group sum| <= N * 255, which fits
int32 for N up to 8,421,504; the loader rejects a layer whose bound exceeds int32 (see
:mod:`.packed_checks`). The conversion to fp32 is exact while N * 255 < 2^24, i.e. N <= 65,793, far
beyond any channel count here.

Layout: x [M, L] with L = positions * channels, (r, s, c) order; codes [K, ceil(L / 4)] packed as
:mod:`.codes` says; scales [K, positions * G] fp32 with G = ceil(channels / N). Rows of the output
(k) run in parallel. Groups of 4 on channel counts divisible by 4 (FGQ's N=4 on every layer past
the first) are exactly one code byte each and take a fused path that decodes in registers; other
group sizes decode a weight row to int8 once and reuse it for all M inputs. See README.md for
what the generated code looks like and why the index arithmetic is unsigned.

Batched path (M >= BATCH_ROWS): the row path re-decodes codes and re-reads scales for every (k, m)
pair, so at batch 64 it lost to fp32 GEMM. Whole blocks of BATCH_ROWS inputs instead go through a
kernel that vectorises across the inputs: x is transposed once to xt [L + 3, M] int16 (3 zero rows
so a 4-weight step may run past L), TILE_OUTPUTS weight rows are decoded once per tile, and every
xt load serves all of them. A group is walked in steps of 4 weights (weights past the group's end
masked to 0): a step's partial sum is at most 4 * 255 = 1,020 in magnitude and is computed in int16
(no widening); groups of more than 4 weights add the steps in int16 up to INT16_GROUP_SIZE weights
(|sum| <= 128 * 255 < 2^15; about 20% faster than int32 sums at N=16 and 64) and in int32 beyond.
Leftover rows (M mod BATCH_ROWS) take the row path. Both paths compute the same exact group sums
and add them in the same order, so a row's output does not depend on the path it took.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .codes import CODES_PER_BYTE, packed_row_bytes
from .operands import check_activations, check_operand

# Batched path: inputs per block (the lanes of its vector loop: fp32 accumulators in zmm, 16 at a
# time, unrolled 4x; narrower blocks left LLVM's main vector loop unused or made it slower), outputs
# decoded and accumulated together (8 spilled registers and fell back to scalar code), weights per
# step of a group. Below BATCH_ROWS inputs the row path is faster (measured in README.md).
BATCH_ROWS = 64
TILE_OUTPUTS = 4
STEP = 4
INT16_GROUP_SIZE = 128  # group sums of up to 128 * 255 = 32,640 fit int16


@njit(cache=True)
def _byte_groups_dot(codes_row, x_row, scales_row):
    """Groups of exactly four weights, one code byte each: group b covers x[4b : 4b + 4].

    A code's two bits are sign-extended in place (0b01 -> +1, 0b11 -> -1), so the four products
    are additions or subtractions of activations whatever instructions LLVM picks for them.
    """
    acc = np.float32(0.0)
    for b in range(np.uint64(codes_row.shape[0])):
        byte = np.int8(codes_row[b])
        j = b * np.uint64(4)
        group_sum = (
            np.int32(np.int8(byte << 6) >> 6) * np.int32(x_row[j])
            + np.int32(np.int8(byte << 4) >> 6) * np.int32(x_row[j + np.uint64(1)])
            + np.int32(np.int8(byte << 2) >> 6) * np.int32(x_row[j + np.uint64(2)])
            + np.int32(byte >> 6) * np.int32(x_row[j + np.uint64(3)])
        )
        acc += scales_row[b] * np.float32(np.int32(group_sum))
    return acc


@njit(cache=True)
def _decode_row(codes_row, decoded):
    """2-bit codes -> int8 {-1, 0, +1} by sign-extending each bit pair; vectorises fully."""
    for b in range(codes_row.shape[0]):
        byte = np.int8(codes_row[b])
        decoded[4 * b] = np.int8(byte << 6) >> 6
        decoded[4 * b + 1] = np.int8(byte << 4) >> 6
        decoded[4 * b + 2] = np.int8(byte << 2) >> 6
        decoded[4 * b + 3] = byte >> 6


@njit(cache=True)
def _decoded_groups_dot(decoded, x_row, scales_row, channels, group_size):
    """Any group size: group g at position p covers channels [g * N, min((g + 1) * N, C)).

    Loop bounds are unsigned: with signed indices Numba guards every access against negative
    (wrap-around) indexing, which kept LLVM from vectorising the group sum (12x slower at N=64).
    """
    acc = np.float32(0.0)
    groups = (channels + group_size - 1) // group_size
    positions = x_row.shape[0] // channels
    scale_index = 0
    for p in range(positions):
        position_end = np.uint64((p + 1) * channels)
        for g in range(groups):
            start = np.uint64(p * channels + g * group_size)
            stop = min(start + np.uint64(group_size), position_end)
            group_sum = np.int32(0)
            for j in range(start, stop):
                group_sum = np.int32(group_sum + np.int32(decoded[j]) * np.int32(x_row[j]))
            acc += scales_row[scale_index] * np.float32(group_sum)
            scale_index += 1
    return acc


@njit(cache=True, parallel=True)
def _ternary_gemm_kernel(x, codes, scales, bias, act_scale, channels, group_size, out):
    rows = x.shape[0]
    byte_groups = group_size == CODES_PER_BYTE and channels % CODES_PER_BYTE == 0
    for k in prange(codes.shape[0]):
        if byte_groups:
            for m in range(rows):
                out[m, k] = _byte_groups_dot(codes[k], x[m], scales[k]) * act_scale + bias[k]
        else:
            decoded = np.empty(codes.shape[1] * CODES_PER_BYTE, dtype=np.int8)
            _decode_row(codes[k], decoded)
            for m in range(rows):
                out[m, k] = _decoded_groups_dot(decoded, x[m], scales[k], channels, group_size) * act_scale + bias[k]


@njit(cache=True)
def _transpose_to_int16(x, xt):
    """x [M, L] -> xt [L + STEP - 1, M] int16 (rows past L stay zero): one contiguous row per weight.

    In blocks of BATCH_ROWS rows of x (M is a multiple of it): a block's rows stay in L1 while each
    xt row is written contiguously. Row by row, every write went to a different cache line, which
    took 80% of a ResNet-20 conv at batch 1.
    """
    for start in range(0, x.shape[0], BATCH_ROWS):
        for j in range(x.shape[1]):
            for m in range(start, start + BATCH_ROWS):
                xt[j, m] = x[m, j]


@njit(cache=True)
def _step_weights(decoded, j, stop, weights):
    """weights[t, q] = decoded[t, j + q], or 0 past the group's end, so a step never leaks into the next group."""
    for t in range(TILE_OUTPUTS):
        for q in range(STEP):
            jq = j + np.uint64(q)
            weights[t, q] = decoded[t, jq] if jq < stop else np.int16(0)


@njit(cache=True)
def _tile_accumulate(decoded, xt, tile_scales, positions, channels, group_size, weights, group_sums, acc):
    """acc[t, m] = sum_g scale[t, g] * groupsum[t, g, m] for TILE_OUTPUTS weight rows and all inputs.

    The innermost loop runs over BATCH_ROWS inputs (a constant trip count, unsigned indices) with the
    TILE_OUTPUTS rows unrolled inside it, so each xt load feeds every output of the tile. A step's
    four products are summed in int16 (bound 4 * 255); groups of one step go straight to fp32.
    """
    blocks = xt.shape[1] // BATCH_ROWS
    groups = (channels + group_size - 1) // group_size
    steps = (group_size + STEP - 1) // STEP
    scale = np.empty(TILE_OUTPUTS, dtype=np.float32)
    scale_index = 0
    for p in range(positions):
        position_end = np.uint64((p + 1) * channels)
        for g in range(groups):
            start = np.uint64(p * channels + g * group_size)
            stop = min(start + np.uint64(group_size), position_end)
            for t in range(TILE_OUTPUTS):
                scale[t] = tile_scales[t, scale_index]
            scale_index += 1
            if steps == 1:
                _step_weights(decoded, start, stop, weights)
                j = start
                for block in range(blocks):
                    base = np.uint64(block * BATCH_ROWS)
                    for m in range(BATCH_ROWS):
                        i = base + np.uint64(m)
                        x0, x1 = xt[j, i], xt[j + np.uint64(1), i]
                        x2, x3 = xt[j + np.uint64(2), i], xt[j + np.uint64(3), i]
                        for t in range(TILE_OUTPUTS):
                            step_sum = np.int16(weights[t, 0] * x0 + weights[t, 1] * x1
                                                + weights[t, 2] * x2 + weights[t, 3] * x3)
                            acc[t, i] += scale[t] * np.float32(step_sum)
                continue
            for block in range(blocks):
                base = np.uint64(block * BATCH_ROWS)
                group_sums[:] = 0
                j = start
                while j < stop:
                    _step_weights(decoded, j, stop, weights)
                    for m in range(BATCH_ROWS):
                        i = base + np.uint64(m)
                        x0, x1 = xt[j, i], xt[j + np.uint64(1), i]
                        x2, x3 = xt[j + np.uint64(2), i], xt[j + np.uint64(3), i]
                        for t in range(TILE_OUTPUTS):
                            step_sum = np.int16(weights[t, 0] * x0 + weights[t, 1] * x1
                                                + weights[t, 2] * x2 + weights[t, 3] * x3)
                            group_sums[t, m] = group_sums[t, m] + step_sum
                    j += np.uint64(STEP)
                for m in range(BATCH_ROWS):
                    i = base + np.uint64(m)
                    for t in range(TILE_OUTPUTS):
                        acc[t, i] += scale[t] * np.float32(group_sums[t, m])


@njit(cache=True, parallel=True)
def _ternary_gemm_batched_kernel(x, codes, scales, bias, act_scale, channels, group_size, out):
    """Rows of x: a multiple of BATCH_ROWS. Tiles of TILE_OUTPUTS outputs run in parallel; a last,
    partial tile is padded with zero weights and scales, and its padding rows are not written."""
    rows, length = x.shape
    xt = np.zeros((length + STEP - 1, rows), dtype=np.int16)
    _transpose_to_int16(x, xt)
    outputs = codes.shape[0]
    for tile in prange((outputs + TILE_OUTPUTS - 1) // TILE_OUTPUTS):
        k0 = tile * TILE_OUTPUTS
        live = min(TILE_OUTPUTS, outputs - k0)
        decoded = np.zeros((TILE_OUTPUTS, codes.shape[1] * CODES_PER_BYTE), dtype=np.int8)
        tile_scales = np.zeros((TILE_OUTPUTS, scales.shape[1]), dtype=np.float32)
        for t in range(live):
            _decode_row(codes[k0 + t], decoded[t])
            tile_scales[t] = scales[k0 + t]
        weights = np.empty((TILE_OUTPUTS, STEP), dtype=np.int16)
        acc = np.zeros((TILE_OUTPUTS, rows), dtype=np.float32)
        if group_size <= INT16_GROUP_SIZE:  # narrower sums, twice the lanes per instruction
            group_sums16 = np.empty((TILE_OUTPUTS, BATCH_ROWS), dtype=np.int16)
            _tile_accumulate(decoded, xt, tile_scales, length // channels, channels, group_size, weights,
                             group_sums16, acc)
        else:
            group_sums32 = np.empty((TILE_OUTPUTS, BATCH_ROWS), dtype=np.int32)
            _tile_accumulate(decoded, xt, tile_scales, length // channels, channels, group_size, weights,
                             group_sums32, acc)
        for t in range(live):
            for m in range(rows):
                out[m, k0 + t] = acc[t, m] * act_scale + bias[k0 + t]


def ternary_gemm(
    x: np.ndarray,
    codes: np.ndarray,
    scales: np.ndarray,
    bias: np.ndarray,
    act_scale: float,
    channels: int,
    group_size: int,
) -> np.ndarray:
    """fp32 [M, K] outputs of integer activations ``x`` [M, L] against packed ternary ``codes``."""
    _check_operands(x, codes, scales, bias, channels, group_size)
    out = np.empty((x.shape[0], codes.shape[0]), dtype=np.float32)
    args = (codes, scales, bias, np.float32(act_scale), channels, group_size)
    batched = x.shape[0] - x.shape[0] % BATCH_ROWS  # whole blocks take the batched path, the rest the row path
    if batched:
        _ternary_gemm_batched_kernel(x[:batched], *args, out[:batched])
    if batched < x.shape[0]:
        _ternary_gemm_kernel(x[batched:], *args, out[batched:])
    return out


def ternary_gemv(
    x: np.ndarray,
    codes: np.ndarray,
    scales: np.ndarray,
    bias: np.ndarray,
    act_scale: float,
    channels: int,
    group_size: int,
) -> np.ndarray:
    """fp32 [K] outputs for one activation vector ``x`` [L] (the batch-1 case)."""
    if x.ndim != 1:
        raise ValueError(f"ternary_gemv takes one activation vector [L], got shape {x.shape}")
    return ternary_gemm(x[np.newaxis], codes, scales, bias, act_scale, channels, group_size)[0]


def _check_operands(
    x: np.ndarray, codes: np.ndarray, scales: np.ndarray, bias: np.ndarray, channels: int, group_size: int
) -> None:
    check_activations(x)
    rows, length = codes.shape[0], x.shape[1]
    if not 1 <= group_size <= channels or length % channels:
        raise ValueError(f"need 1 <= group_size <= channels and channels dividing L={length}, "
                         f"got group_size={group_size}, channels={channels}")
    groups = (length // channels) * -(-channels // group_size)
    check_operand(codes, "codes", np.uint8, (rows, packed_row_bytes(length)))
    check_operand(scales, "scales", np.float32, (rows, groups))
    check_operand(bias, "bias", np.float32, (rows,))
