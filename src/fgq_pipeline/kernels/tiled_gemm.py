"""Ternary and int8 GEMM on 16-output tiles with 4-byte dot products (AVX-512 VNNI ``vpdpbusd``).

A layer is re-laid out once, when :class:`~.integer_net.IntegerNet` loads it: tile t holds outputs
16t..16t+15, and for each quad q of 4 consecutive reduction positions one 64-byte vector holds
their weights, output-major (byte 4o + i = w[16t + o, 4q + i]). One ``dot4`` of that vector with
the quad of an input row, repeated in every lane, adds 64 products into the tile's 16 int32 group
sums, exactly. At a group's end the sums are converted to fp32 once and multiplied by the 16 group
scales, as in :mod:`.ternary_gemm`; groups of 4 weights take one ``dot4`` each, N=64 sixteen.
A ternary layer with int8 scales is an int8 layer (weights t * q, one group per filter, one fp32
multiply by the filter's scale-of-scales), which is what makes it as fast as one.

Two kernels read the layout:

* batched (any number of rows): weights decoded to int8 {-1, 0, +1} at load, 8 input rows per
  step so each weight vector feeds 8 dot products (8 int32 and 8 fp32 accumulators in registers).
  Rows run in chunks of 64, each chunk against one tile, chunks and tiles in parallel.
* GEMV (fewer than GEMV_MAX_ROWS rows, ternary layers): the 2-bit codes themselves, in the order
  :func:`.simd.decode_codes` expands in registers, so a batch-1 layer reads 2 bits per weight and
  not 8; four tiles at a time keep four independent accumulator chains busy.

Why int32 cannot overflow: a group sum is at most terms * max|w| * 255, bounded like the other
kernels' (the loader's check); :meth:`TiledLayer.supports` refuses layers whose bound with the
offset below would not fit. Signed activations (int8 in [-127, 127]) are fed to ``vpdpbusd``,
which wants unsigned bytes, as x + 128, and 128 * (sum of the group's weights), computed at load,
is subtracted from each group sum before it is scaled: the group sums are still exact.

Layers whose groups do not split into whole quads (input channels or N not a multiple of 4, or
an int8 filter length that is not) keep the general kernels of :mod:`.ternary_gemm` and
:mod:`.int8_gemm`. Measured in README.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from .codes import CODES_PER_BYTE, unpack_codes
from .operands import check_activations
from .packed import PackedLayer, as_int8_layer
from .packed_checks import ACCUMULATOR_MAX
from .simd import (
    BYTES,
    HAS_F16C,
    LANES,
    add_scaled,
    broadcast_quad,
    decode_codes,
    dot4,
    float_zeros,
    int_add_scaled,
    int_sub,
    int_zeros,
    load_bytes,
    store_affine,
)

QUAD = CODES_PER_BYTE  # reduction positions per dot4 lane (vpdpbusd sums 4 products)
TILE = LANES  # outputs per tile
ROW_BLOCK = 8  # rows per step of the batched kernel (unrolled below)
ROW_CHUNK = 64  # rows per parallel task: the tile's weights stay in L1/L2 across its steps
TILE_GROUP = 4  # tiles per GEMV task (unrolled below); scales, offsets and codes are stored per group of 4
GROUP_LANES = TILE_GROUP * TILE
GEMV_MAX_ROWS = 3  # fewer rows read the 2-bit codes, more the int8 weights (about even at 3 rows)
SIGNED_OFFSET = 128  # int8 activations x are fed as the unsigned bytes x + 128


@njit(cache=True, parallel=True)
def _batched_kernel(x, weights, scales, offsets, group_ends, signed, bias, act_scale, out):
    rows, length = x.shape
    tiles = weights.shape[0]
    width = out.shape[1]
    chunks = (rows + ROW_CHUNK - 1) // ROW_CHUNK
    x_flat, out_flat = x.ravel(), out.ravel()
    for task in prange(chunks * tiles):
        chunk, tile = task // tiles, task % tiles
        w, s, c = weights[tile].ravel(), scales[tile].ravel(), offsets[tile].ravel()
        for r in range(chunk * ROW_CHUNK, min((chunk + 1) * ROW_CHUNK, rows), ROW_BLOCK):
            # rows past the end repeat the last row; their results are not stored
            x0, x1 = min(r, rows - 1) * length, min(r + 1, rows - 1) * length
            x2, x3 = min(r + 2, rows - 1) * length, min(r + 3, rows - 1) * length
            x4, x5 = min(r + 4, rows - 1) * length, min(r + 5, rows - 1) * length
            x6, x7 = min(r + 6, rows - 1) * length, min(r + 7, rows - 1) * length
            f0, f1, f2, f3 = float_zeros(), float_zeros(), float_zeros(), float_zeros()
            f4, f5, f6, f7 = float_zeros(), float_zeros(), float_zeros(), float_zeros()
            start = 0
            for g in range(group_ends.shape[0]):
                a0, a1, a2, a3 = int_zeros(), int_zeros(), int_zeros(), int_zeros()
                a4, a5, a6, a7 = int_zeros(), int_zeros(), int_zeros(), int_zeros()
                for q in range(start, group_ends[g]):
                    wq, j = load_bytes(w, q * BYTES), q * QUAD
                    a0 = dot4(a0, broadcast_quad(x_flat, x0 + j), wq)
                    a1 = dot4(a1, broadcast_quad(x_flat, x1 + j), wq)
                    a2 = dot4(a2, broadcast_quad(x_flat, x2 + j), wq)
                    a3 = dot4(a3, broadcast_quad(x_flat, x3 + j), wq)
                    a4 = dot4(a4, broadcast_quad(x_flat, x4 + j), wq)
                    a5 = dot4(a5, broadcast_quad(x_flat, x5 + j), wq)
                    a6 = dot4(a6, broadcast_quad(x_flat, x6 + j), wq)
                    a7 = dot4(a7, broadcast_quad(x_flat, x7 + j), wq)
                gs = g * TILE
                if signed:
                    a0, a1, a2, a3 = int_sub(a0, c, gs), int_sub(a1, c, gs), int_sub(a2, c, gs), int_sub(a3, c, gs)
                    a4, a5, a6, a7 = int_sub(a4, c, gs), int_sub(a5, c, gs), int_sub(a6, c, gs), int_sub(a7, c, gs)
                f0, f1, f2, f3 = add_scaled(f0, a0, s, gs), add_scaled(f1, a1, s, gs), add_scaled(f2, a2, s, gs), \
                    add_scaled(f3, a3, s, gs)
                f4, f5, f6, f7 = add_scaled(f4, a4, s, gs), add_scaled(f5, a5, s, gs), add_scaled(f6, a6, s, gs), \
                    add_scaled(f7, a7, s, gs)
                start = group_ends[g]
            column = tile * TILE
            for i, f in enumerate((f0, f1, f2, f3, f4, f5, f6, f7)):
                if r + i < rows:
                    store_affine(out_flat, (r + i) * width + column, f, act_scale, bias, column)


@njit(cache=True, parallel=True)
def _gemv_kernel(x, codes, scales, multipliers, offsets, group_ends, signed, bias, act_scale, out):
    """One task per group of 4 tiles (64 outputs): four independent accumulator chains, one code stream.

    ``multipliers`` (int8 scales: each output's scale-of-scales) or None; Numba compiles the None
    case without the branches that read them. With int8 scales each group sum times its int8 scale is
    added in int32, and the filter's total is multiplied by its scale-of-scales once, as the int8
    layer it is (:func:`.packed.as_int8_layer`) is computed by the batched kernel."""
    rows, length = x.shape
    tiles = out.shape[1] // TILE
    width = out.shape[1]
    x_flat, out_flat = x.ravel(), out.ravel()
    for task in prange(codes.shape[0]):
        c, s, o = codes[task].ravel(), scales[task].ravel(), offsets[task].ravel()
        lanes = task * GROUP_LANES  # this task's first output: its multipliers
        for m in range(rows):
            row = m * length
            f0, f1, f2, f3 = float_zeros(), float_zeros(), float_zeros(), float_zeros()
            i0, i1, i2, i3 = int_zeros(), int_zeros(), int_zeros(), int_zeros()
            start = 0
            for g in range(group_ends.shape[0]):
                a0, a1, a2, a3 = int_zeros(), int_zeros(), int_zeros(), int_zeros()
                for q in range(start, group_ends[g]):
                    xq, cq = broadcast_quad(x_flat, row + q * QUAD), q * GROUP_LANES
                    a0 = dot4(a0, xq, decode_codes(c, cq))
                    a1 = dot4(a1, xq, decode_codes(c, cq + TILE))
                    a2 = dot4(a2, xq, decode_codes(c, cq + 2 * TILE))
                    a3 = dot4(a3, xq, decode_codes(c, cq + 3 * TILE))
                gs = g * GROUP_LANES
                if signed:
                    a0, a1 = int_sub(a0, o, gs), int_sub(a1, o, gs + TILE)
                    a2, a3 = int_sub(a2, o, gs + 2 * TILE), int_sub(a3, o, gs + 3 * TILE)
                if multipliers is None:
                    f0, f1 = add_scaled(f0, a0, s, gs), add_scaled(f1, a1, s, gs + TILE)
                    f2, f3 = add_scaled(f2, a2, s, gs + 2 * TILE), add_scaled(f3, a3, s, gs + 3 * TILE)
                else:
                    i0, i1 = int_add_scaled(i0, a0, s, gs), int_add_scaled(i1, a1, s, gs + TILE)
                    i2, i3 = int_add_scaled(i2, a2, s, gs + 2 * TILE), int_add_scaled(i3, a3, s, gs + 3 * TILE)
                start = group_ends[g]
            if multipliers is not None:
                f0, f1 = add_scaled(f0, i0, multipliers, lanes), add_scaled(f1, i1, multipliers, lanes + TILE)
                f2 = add_scaled(f2, i2, multipliers, lanes + 2 * TILE)
                f3 = add_scaled(f3, i3, multipliers, lanes + 3 * TILE)
            for i, f in enumerate((f0, f1, f2, f3)):
                tile = task * TILE_GROUP + i
                if tile < tiles:  # the last group's padding tiles are computed, not stored
                    store_affine(out_flat, m * width + tile * TILE, f, act_scale, bias, tile * TILE)


@dataclass(frozen=True)
class GemvOperands:
    """A ternary layer for the GEMV kernel, per group of 4 tiles: ``codes`` uint8 [T / 4, Q, 64] (16
    bytes per tile, see :func:`.simd.decode_codes`), ``scales`` and ``offsets`` int32 [T / 4, G, 64]:
    one stream each for the four tiles' accumulators (per-tile arrays, four streams, were about 10%
    slower at batch 1; this order was slower in the batched kernel); ``group_ends`` [G] as in
    :class:`TiledLayer` (the batched kernel runs an int8-scale layer as one group per filter).

    The scales stay as the file stores them (fp32; fp16 as its uint16 bits; int8, with
    ``multipliers`` fp32 [K rounded up to 64], each output's scale-of-scales, else None): at N=4
    the scales are most of what a batch-1 layer reads, 8 bits per weight in fp32 against 2 for the
    codes. int8 scales multiply the group sums in int32, so the GEMV computes what the batched
    kernel computes from the weights t * q."""

    codes: np.ndarray
    scales: np.ndarray
    offsets: np.ndarray
    multipliers: np.ndarray | None
    group_ends: np.ndarray


@dataclass(frozen=True)
class TiledLayer:
    """One layer in tile layout, T = ceil(K / 16) tiles: ``weights`` int8 [T, Q, 64]; ``scales`` fp32
    and ``offsets`` int32 (128 * each group's weight sum) [T, G, 16]; ``group_ends`` [G] (the quad
    after each group); ``bias`` fp32 [K rounded up to 64]; ``gemv`` for ternary layers whose groups
    are whole quads, else None. Outputs past K are zero padding. A ternary layer with int8 scales is
    laid out for the batched kernel as the int8 layer it defines (:func:`.packed.as_int8_layer`)."""

    weights: np.ndarray
    scales: np.ndarray
    offsets: np.ndarray
    group_ends: np.ndarray
    bias: np.ndarray
    gemv: GemvOperands | None
    out_channels: int

    @staticmethod
    def supports(layer: PackedLayer) -> bool:
        """Groups of whole quads, and group sums of biased signed inputs that fit int32."""
        if layer.weight_format == "ternary" and layer.scale_dtype != "int8":
            if not _ternary_quads(layer):
                return False
            terms, weight_max = layer.group_size, 1
        else:  # int8 weights, or ternary codes times int8 scales: one sum over the filter
            terms, weight_max = layer.reduction_length, SIGNED_OFFSET
        return layer.reduction_length % QUAD == 0 and terms * weight_max * 255 <= ACCUMULATOR_MAX

    @classmethod
    def from_packed(cls, layer: PackedLayer) -> TiledLayer:
        if not cls.supports(layer):
            raise ValueError(f"layer {layer.name!r}: its groups do not split into whole quads of {QUAD} weights "
                             f"(in_channels={layer.in_channels}, group_size={layer.group_size})")
        batched = as_int8_layer(layer)
        dense, group_ends, offsets = _dense_layout(batched)
        tiles, quads, outputs = -(-layer.out_channels // TILE), layer.reduction_length // QUAD, layer.out_channels
        scales = np.zeros((dense.shape[0], len(group_ends)), dtype=np.float32)
        scales[:outputs] = batched.fp32_scales
        bias = np.zeros(dense.shape[0], dtype=np.float32)
        bias[:outputs] = layer.bias
        by_quad = dense.reshape(-1, TILE, quads, QUAD).transpose(0, 2, 1, 3)  # [tile, Q, output, i]
        gemv = _gemv_operands(layer) if layer.weight_format == "ternary" and _ternary_quads(layer) else None
        return cls(
            weights=np.ascontiguousarray(by_quad[:tiles].reshape(tiles, quads, BYTES)),
            scales=_lanes_major(scales[:tiles * TILE], TILE),
            offsets=_lanes_major(offsets[:tiles * TILE], TILE),
            group_ends=group_ends,
            bias=bias,
            gemv=gemv,
            out_channels=outputs,
        )

    def gemm(self, x: np.ndarray, act_scale: float) -> np.ndarray:
        """fp32 [M, K] outputs for integer activations ``x`` [M, L], as :func:`.ternary_gemm` gives them."""
        check_activations(x)
        tiles, quads, _ = self.weights.shape
        if x.shape[1] != quads * QUAD:
            raise ValueError(f"activations have {x.shape[1]} columns, the layer takes {quads * QUAD}")
        signed = x.dtype == np.int8
        if signed:
            x = x.view(np.uint8) ^ np.uint8(SIGNED_OFFSET)
        out = np.empty((x.shape[0], tiles * TILE), dtype=np.float32)
        if self.gemv is not None and x.shape[0] < GEMV_MAX_ROWS:
            gemv = self.gemv
            _gemv_kernel(x, gemv.codes, gemv.scales, gemv.multipliers, gemv.offsets, gemv.group_ends, signed,
                         self.bias, np.float32(act_scale), out)
        else:
            _batched_kernel(x, self.weights, self.scales, self.offsets, self.group_ends, signed, self.bias,
                            np.float32(act_scale), out)
        return out if out.shape[1] == self.out_channels else np.ascontiguousarray(out[:, :self.out_channels])


def _ternary_quads(layer: PackedLayer) -> bool:
    """Whether every group of a ternary layer is whole quads (what the GEMV's code layout needs)."""
    return not (layer.in_channels % QUAD or (layer.group_size < layer.in_channels and layer.group_size % QUAD))


def _dense_layout(layer: PackedLayer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """int8 weights [K rounded up to 64, L] (zero rows past K), the group ends, and the offsets
    128 * each group's weight sum, int32 [K rounded up to 64, G]."""
    length, outputs = layer.reduction_length, layer.out_channels
    padded = -(-outputs // GROUP_LANES) * GROUP_LANES
    dense = np.zeros((padded, length), dtype=np.int8)
    dense[:outputs] = unpack_codes(layer.weights, length) if layer.weight_format == "ternary" else layer.weights
    group_ends = _group_ends(layer)
    group_sums = np.add.reduceat(dense.astype(np.int32), np.r_[0, group_ends[:-1]] * QUAD, axis=1)
    return dense, group_ends, (SIGNED_OFFSET * group_sums).astype(np.int32)


def _gemv_operands(layer: PackedLayer) -> GemvOperands:
    """The ternary layer's codes, scales as stored (fp16 decoded where the CPU lacks F16C) and offsets."""
    dense, group_ends, offsets = _dense_layout(layer)
    quads, outputs = layer.reduction_length // QUAD, layer.out_channels
    by_quad = dense.reshape(-1, TILE, quads, QUAD).transpose(0, 2, 1, 3)
    as_stored = layer.scales.dtype != np.float16 or HAS_F16C
    stored = np.zeros((dense.shape[0], len(group_ends)), dtype=layer.scales.dtype if as_stored else np.float32)
    stored[:outputs] = layer.scales if as_stored else layer.fp32_scales
    stored = stored.view(np.uint16) if stored.dtype == np.float16 else stored
    multipliers = None
    if layer.scale_of_scales is not None:
        multipliers = np.ones(dense.shape[0], dtype=np.float32)  # padding outputs have zero scales
        multipliers[:outputs] = layer.scale_of_scales
    return GemvOperands(_group_codes(by_quad), _lanes_major(stored, GROUP_LANES), _lanes_major(offsets, GROUP_LANES),
                        multipliers, group_ends)


def _group_ends(layer: PackedLayer) -> np.ndarray:
    """Quad index after each group, in the scales' order: per kernel position, its channel groups."""
    if layer.weight_format == "int8":
        return np.array([layer.reduction_length // QUAD], dtype=np.int64)
    channels, size = layer.in_channels, layer.group_size
    ends = [min(g + size, channels) for g in range(0, channels, size)]
    return np.array([(p * channels + end) // QUAD for p in range(layer.kernel_positions) for end in ends],
                    dtype=np.int64)


def _lanes_major(per_output: np.ndarray, lanes: int) -> np.ndarray:
    """[K', G] -> [K' / lanes, G, lanes]: a group's values for ``lanes`` outputs are contiguous."""
    return np.ascontiguousarray(per_output.reshape(-1, lanes, per_output.shape[1]).transpose(0, 2, 1))


def _group_codes(by_quad: np.ndarray) -> np.ndarray:
    """int8 weights [T, Q, 16, 4] -> uint8 [T / 4, Q, 64]: per tile 16 bytes, byte j holding the
    2-bit codes of vector bytes j, j + 16, j + 32, j + 48 (see :func:`.simd.decode_codes`)."""
    tiles, quads = by_quad.shape[:2]
    fields = (by_quad.reshape(tiles, quads, CODES_PER_BYTE, TILE).view(np.uint8) & 0b11).astype(np.uint8)
    shifts = (2 * np.arange(CODES_PER_BYTE, dtype=np.uint8))[:, None]
    per_tile = np.bitwise_or.reduce(fields << shifts, axis=2).astype(np.uint8)  # [T, Q, 16]
    by_group = per_tile.reshape(-1, TILE_GROUP, quads, TILE).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(by_group.reshape(-1, quads, GROUP_LANES))
