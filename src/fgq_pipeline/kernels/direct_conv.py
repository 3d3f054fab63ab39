"""Direct 3x3 convolutions (stride 1) on the tiled layout: each input quad loaded feeds three kernel columns.

The batched kernel (:mod:`.tiled_gemm`) broadcasts one input quad per ``dot4`` on a layer of a single
16-output tile (16 filters: no second tile to share the load), so its loads outnumber its dot
products. Here a strip of consecutive output pixels of one row is computed together: pixel p at
kernel column dx reads input column p + dx, so each input column broadcast once serves up to three
(pixel, kernel column) pairs, and the three weight vectors of a kernel row stay in registers across
the strip (S + 2 broadcasts and 3 weight loads per 3S ``dot4``).

The sums are the batched kernel's, exactly: the same int32 group sums, converted and scaled in the
same group order. Two layouts of groups qualify:

* one group per kernel position (ternary with N >= input channels >= 16, fp32 or fp16 scales): each
  pixel keeps a sum per kernel column of the current kernel row, 4 pixels per strip;
* one group per filter (int8 layers, ternary with int8 scales): one sum per pixel, 16 pixels per strip.

Strips never cross an output row; a row narrower than a strip keeps the batched kernel, and a row
that does not split into whole strips ends with a strip shifted left onto pixels already computed
(the same values, stored twice).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numba import njit, prange

from .codes import CODES_PER_BYTE
from .simd import (
    BYTES,
    LANES,
    add_loaded,
    add_scaled,
    affine,
    broadcast_quad,
    dot4,
    float_zeros,
    int_sub,
    int_zeros,
    load_bytes,
    relu_lanes,
    store_floats,
    store_quantized,
)

QUAD, TILE = CODES_PER_BYTE, LANES  # as in the tiled layout (:mod:`.tiled_gemm`)
KERNEL_SIZE = 3
POSITIONS = KERNEL_SIZE * KERNEL_SIZE
POSITION_STRIP = 4  # pixels per strip with a group per kernel position (12 int32 + 4 fp32 accumulators)
MIN_POSITION_QUADS = 4  # with fewer channels per position (an RGB stem's 4, or 8) the batched kernel measured faster
FILTER_STRIP = 16  # pixels per strip with one group per filter (16 int32 accumulators)
STRIPS_PER_TASK = 8
QUAD_BYTES = np.uint64(BYTES)
PER_POSITION, PER_FILTER = 1, 2  # the kernel a layer takes (0: neither, the batched kernel)


def direct_kind(group_ends: np.ndarray, quads: int) -> int:
    """PER_POSITION, PER_FILTER or 0 (neither), from a 3x3 layer's group ends and its quads per filter."""
    if len(group_ends) == 1:
        return PER_FILTER
    per_position = quads // POSITIONS
    if (quads % POSITIONS == 0 and per_position >= MIN_POSITION_QUADS
            and np.array_equal(group_ends, per_position * np.arange(1, POSITIONS + 1))):
        return PER_POSITION
    return 0


def direct_plan(weights: np.ndarray, group_ends: np.ndarray, shape: tuple[int, int, int, int],
                kernel_size: tuple[int, int], stride: tuple[int, int],
                dilation: tuple[int, int]) -> tuple[int, np.ndarray, np.ndarray] | None:
    """(kind, strip starts, strip rows) for a tiled layer (``weights`` [tiles, quads, 64]) convolving the
    padded NHWC input ``shape``, or None where the batched kernel keeps it: more than one tile (pairs
    of tiles already share each input load there, and measured faster); not 3x3, stride 1, dilation 1;
    other groups; rows narrower than a strip."""
    tiles, quads = weights.shape[:2]
    if tiles > 1 or kernel_size != (KERNEL_SIZE, KERNEL_SIZE) or stride != (1, 1) or dilation != (1, 1):
        return None
    kind = direct_kind(group_ends, quads)
    strips = conv_strips(shape, kind) if kind else None
    return None if strips is None else (kind, *strips)


@lru_cache(maxsize=256)
def conv_strips(shape: tuple[int, int, int, int], kind: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Each strip's first input byte in the padded NHWC input ``shape`` of a 3x3, stride-1 convolution
    and its first output row (read-only: shared by every call with this shape); None where the rows
    are narrower than a strip."""
    batch, height, width, channels = shape
    strip = POSITION_STRIP if kind == PER_POSITION else FILTER_STRIP
    out_h, out_w = height - KERNEL_SIZE + 1, width - KERNEL_SIZE + 1
    if out_w < strip or out_h < 1:
        return None
    firsts = np.array(sorted({min(x, out_w - strip) for x in range(0, out_w, strip)}))
    lines = np.arange(batch * out_h)  # output rows (b, y), each at padded input row b * height + y
    rows = (lines[:, None] * out_w + firsts[None, :]).ravel().astype(np.int64)
    starts = (((lines // out_h * height + lines % out_h)[:, None] * width + firsts[None, :]) * channels)
    starts = starts.ravel().astype(np.int64)
    rows.flags.writeable = starts.flags.writeable = False
    return starts, rows


@njit(cache=True, parallel=True)
def per_position_kernel(x_flat, strip_starts, strip_rows, row_bytes, weights, scales, offsets, signed, bias,
                        act_scale, residual, relu, keep_floats, integers, integer_starts, next_scale, next_max, out):
    """A 3x3 layer with a group per kernel position: the batched kernel's outputs and epilogue
    (residual, ReLU, requantized outputs), 4 pixels per strip, one tile per task."""
    strips, tiles, width = strip_starts.shape[0], weights.shape[0], out.shape[1]
    quads = weights.shape[1] // POSITIONS  # per kernel position
    channels, position_bytes = np.uint64(QUAD * quads), np.uint64(quads) * QUAD_BYTES
    add_residual, requantize = residual.size > 0, integers.size > 0
    out_flat = out.ravel()
    chunks = (strips + STRIPS_PER_TASK - 1) // STRIPS_PER_TASK
    for task in prange(chunks * tiles):
        chunk, tile = task // tiles, task % tiles
        w, s, c = weights[tile].ravel(), scales[tile].ravel(), offsets[tile].ravel()
        column = tile * TILE
        for strip in range(chunk * STRIPS_PER_TASK, min((chunk + 1) * STRIPS_PER_TASK, strips)):
            f0, f1, f2, f3 = float_zeros(), float_zeros(), float_zeros(), float_zeros()
            for dy in range(KERNEL_SIZE):  # a{p}{dx}: pixel p's sum at kernel column dx of this kernel row
                a00, a01, a02 = int_zeros(), int_zeros(), int_zeros()
                a10, a11, a12 = int_zeros(), int_zeros(), int_zeros()
                a20, a21, a22 = int_zeros(), int_zeros(), int_zeros()
                a30, a31, a32 = int_zeros(), int_zeros(), int_zeros()
                line = np.uint64(strip_starts[strip]) + np.uint64(dy) * np.uint64(row_bytes)
                first = np.uint64(KERNEL_SIZE * dy) * position_bytes
                for q in range(np.uint64(quads)):  # pixel p, kernel column dx: input column p + dx
                    at, k = line + q * np.uint64(QUAD), first + q * QUAD_BYTES
                    u0, u1, u2 = load_bytes(w, k), load_bytes(w, k + position_bytes), \
                        load_bytes(w, k + 2 * position_bytes)
                    i = broadcast_quad(x_flat, at)
                    a00 = dot4(a00, i, u0)
                    i = broadcast_quad(x_flat, at + channels)
                    a10, a01 = dot4(a10, i, u0), dot4(a01, i, u1)
                    i = broadcast_quad(x_flat, at + 2 * channels)
                    a20, a11, a02 = dot4(a20, i, u0), dot4(a11, i, u1), dot4(a02, i, u2)
                    i = broadcast_quad(x_flat, at + 3 * channels)
                    a30, a21, a12 = dot4(a30, i, u0), dot4(a21, i, u1), dot4(a12, i, u2)
                    i = broadcast_quad(x_flat, at + 4 * channels)
                    a31, a22 = dot4(a31, i, u1), dot4(a22, i, u2)
                    i = broadcast_quad(x_flat, at + 5 * channels)
                    a32 = dot4(a32, i, u2)
                g0 = KERNEL_SIZE * dy * TILE
                g1, g2 = g0 + TILE, g0 + 2 * TILE
                if signed:
                    a00, a10, a20, a30 = int_sub(a00, c, g0), int_sub(a10, c, g0), int_sub(a20, c, g0), \
                        int_sub(a30, c, g0)
                    a01, a11, a21, a31 = int_sub(a01, c, g1), int_sub(a11, c, g1), int_sub(a21, c, g1), \
                        int_sub(a31, c, g1)
                    a02, a12, a22, a32 = int_sub(a02, c, g2), int_sub(a12, c, g2), int_sub(a22, c, g2), \
                        int_sub(a32, c, g2)
                f0, f1, f2, f3 = add_scaled(f0, a00, s, g0), add_scaled(f1, a10, s, g0), add_scaled(f2, a20, s, g0), \
                    add_scaled(f3, a30, s, g0)
                f0, f1, f2, f3 = add_scaled(f0, a01, s, g1), add_scaled(f1, a11, s, g1), add_scaled(f2, a21, s, g1), \
                    add_scaled(f3, a31, s, g1)
                f0, f1, f2, f3 = add_scaled(f0, a02, s, g2), add_scaled(f1, a12, s, g2), add_scaled(f2, a22, s, g2), \
                    add_scaled(f3, a32, s, g2)
            for p, f in enumerate((f0, f1, f2, f3)):
                row = strip_rows[strip] + p
                y, at = affine(f, act_scale, bias, column), row * width + column
                if add_residual:  # the graph's add, then its ReLU, in registers
                    y = add_loaded(y, residual, at)
                if relu:
                    y = relu_lanes(y)
                if keep_floats:
                    store_floats(out_flat, at, y)
                if requantize:
                    store_quantized(integers, integer_starts[row] + column, y, next_scale, next_max)


@njit(cache=True, parallel=True)
def per_filter_kernel(x_flat, strip_starts, strip_rows, row_bytes, weights, scales, offsets, signed, bias,
                      act_scale, residual, relu, keep_floats, integers, integer_starts, next_scale, next_max, out):
    """A 3x3 layer with one group per filter: the batched kernel's outputs and epilogue, 16 pixels per
    strip, one tile per task."""
    strips, tiles, width = strip_starts.shape[0], weights.shape[0], out.shape[1]
    quads = weights.shape[1] // POSITIONS
    channels, position_bytes = np.uint64(QUAD * quads), np.uint64(quads) * QUAD_BYTES
    add_residual, requantize = residual.size > 0, integers.size > 0
    out_flat = out.ravel()
    chunks = (strips + STRIPS_PER_TASK - 1) // STRIPS_PER_TASK
    for task in prange(chunks * tiles):
        chunk, tile = task // tiles, task % tiles
        w, s, c = weights[tile].ravel(), scales[tile].ravel(), offsets[tile].ravel()
        column = tile * TILE
        for strip in range(chunk * STRIPS_PER_TASK, min((chunk + 1) * STRIPS_PER_TASK, strips)):
            a0, a1, a2, a3, a4, a5 = int_zeros(), int_zeros(), int_zeros(), int_zeros(), int_zeros(), int_zeros()
            a6, a7 = int_zeros(), int_zeros()
            a8, a9, a10, a11, a12, a13 = int_zeros(), int_zeros(), int_zeros(), int_zeros(), int_zeros(), int_zeros()
            a14, a15 = int_zeros(), int_zeros()
            for dy in range(KERNEL_SIZE):
                line = np.uint64(strip_starts[strip]) + np.uint64(dy) * np.uint64(row_bytes)
                first = np.uint64(KERNEL_SIZE * dy) * position_bytes
                for q in range(np.uint64(quads)):  # pixel p, kernel column dx: input column p + dx
                    at, k = line + q * np.uint64(QUAD), first + q * QUAD_BYTES
                    u0, u1, u2 = load_bytes(w, k), load_bytes(w, k + position_bytes), \
                        load_bytes(w, k + 2 * position_bytes)
                    i = broadcast_quad(x_flat, at)
                    a0 = dot4(a0, i, u0)
                    i = broadcast_quad(x_flat, at + channels)
                    a1, a0 = dot4(a1, i, u0), dot4(a0, i, u1)
                    i = broadcast_quad(x_flat, at + 2 * channels)
                    a2, a1, a0 = dot4(a2, i, u0), dot4(a1, i, u1), dot4(a0, i, u2)
                    i = broadcast_quad(x_flat, at + 3 * channels)
                    a3, a2, a1 = dot4(a3, i, u0), dot4(a2, i, u1), dot4(a1, i, u2)
                    i = broadcast_quad(x_flat, at + 4 * channels)
                    a4, a3, a2 = dot4(a4, i, u0), dot4(a3, i, u1), dot4(a2, i, u2)
                    i = broadcast_quad(x_flat, at + 5 * channels)
                    a5, a4, a3 = dot4(a5, i, u0), dot4(a4, i, u1), dot4(a3, i, u2)
                    i = broadcast_quad(x_flat, at + 6 * channels)
                    a6, a5, a4 = dot4(a6, i, u0), dot4(a5, i, u1), dot4(a4, i, u2)
                    i = broadcast_quad(x_flat, at + 7 * channels)
                    a7, a6, a5 = dot4(a7, i, u0), dot4(a6, i, u1), dot4(a5, i, u2)
                    i = broadcast_quad(x_flat, at + 8 * channels)
                    a8, a7, a6 = dot4(a8, i, u0), dot4(a7, i, u1), dot4(a6, i, u2)
                    i = broadcast_quad(x_flat, at + 9 * channels)
                    a9, a8, a7 = dot4(a9, i, u0), dot4(a8, i, u1), dot4(a7, i, u2)
                    i = broadcast_quad(x_flat, at + 10 * channels)
                    a10, a9, a8 = dot4(a10, i, u0), dot4(a9, i, u1), dot4(a8, i, u2)
                    i = broadcast_quad(x_flat, at + 11 * channels)
                    a11, a10, a9 = dot4(a11, i, u0), dot4(a10, i, u1), dot4(a9, i, u2)
                    i = broadcast_quad(x_flat, at + 12 * channels)
                    a12, a11, a10 = dot4(a12, i, u0), dot4(a11, i, u1), dot4(a10, i, u2)
                    i = broadcast_quad(x_flat, at + 13 * channels)
                    a13, a12, a11 = dot4(a13, i, u0), dot4(a12, i, u1), dot4(a11, i, u2)
                    i = broadcast_quad(x_flat, at + 14 * channels)
                    a14, a13, a12 = dot4(a14, i, u0), dot4(a13, i, u1), dot4(a12, i, u2)
                    i = broadcast_quad(x_flat, at + 15 * channels)
                    a15, a14, a13 = dot4(a15, i, u0), dot4(a14, i, u1), dot4(a13, i, u2)
                    i = broadcast_quad(x_flat, at + 16 * channels)
                    a15, a14 = dot4(a15, i, u1), dot4(a14, i, u2)
                    i = broadcast_quad(x_flat, at + 17 * channels)
                    a15 = dot4(a15, i, u2)
            if signed:
                a0, a1, a2, a3 = int_sub(a0, c, 0), int_sub(a1, c, 0), int_sub(a2, c, 0), int_sub(a3, c, 0)
                a4, a5, a6, a7 = int_sub(a4, c, 0), int_sub(a5, c, 0), int_sub(a6, c, 0), int_sub(a7, c, 0)
                a8, a9, a10, a11 = int_sub(a8, c, 0), int_sub(a9, c, 0), int_sub(a10, c, 0), int_sub(a11, c, 0)
                a12, a13, a14, a15 = int_sub(a12, c, 0), int_sub(a13, c, 0), int_sub(a14, c, 0), int_sub(a15, c, 0)
            for p, a in enumerate((a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15)):
                row = strip_rows[strip] + p
                y, at = affine(add_scaled(float_zeros(), a, s, 0), act_scale, bias, column), row * width + column
                if add_residual:
                    y = add_loaded(y, residual, at)
                if relu:
                    y = relu_lanes(y)
                if keep_floats:
                    store_floats(out_flat, at, y)
                if requantize:
                    store_quantized(integers, integer_starts[row] + column, y, next_scale, next_max)

DIRECT_KERNELS = {PER_POSITION: per_position_kernel, PER_FILTER: per_filter_kernel}
