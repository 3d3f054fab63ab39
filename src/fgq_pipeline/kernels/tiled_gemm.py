"""Ternary and int8 GEMM on 16-output tiles with 4-byte dot products (``vpdpbusd``, or ``vpmaddwd``: simd.py).

A layer is re-laid out once, when :class:`~.integer_net.IntegerNet` loads it: tile t holds outputs
16t..16t+15, and for each quad q of 4 consecutive reduction positions one 64-byte vector holds
their weights, output-major (byte 4o + i = w[16t + o, 4q + i]). One ``dot4`` of that vector with
the quad of an input row, repeated in every lane, adds 64 products into the tile's 16 int32 group
sums, exactly. At a group's end the sums are converted to fp32 once and multiplied by the 16 group
scales, as in :mod:`.ternary_gemm`; groups of 4 weights take one ``dot4`` each, N=64 sixteen.
A ternary layer with int8 scales is an int8 layer (weights t * q, one group per filter, one fp32
multiply by the filter's scale-of-scales), which is what makes it as fast as one.

Three kernels read the layout:

* batched (any number of rows): weights decoded to int8 {-1, 0, +1} at load. Tiles run in pairs,
  6 input rows per step: each input quad loaded feeds both tiles and each weight vector 6 rows (12
  int32 and 12 fp32 accumulators in registers; 8 loads per 12 dot products where one tile at a time
  needed 9 per 8). An odd last tile runs alone, 8 rows per step. Each quad's input offset comes from
  a table (``quad_offsets``), so a convolution's kernel positions cost no loop of their own. Rows
  run in chunks of 64, each chunk against one pair, chunks and pairs in parallel.
* direct 3x3 (:mod:`.direct_conv`): a conv of a single tile, 3x3 with stride 1, one group per filter
  or per kernel position: strips of output pixels, each input quad loaded once for three kernel columns.
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
from functools import lru_cache

import numpy as np
from numba import njit, prange

from .activations import ActivationFormat
from .codes import CODES_PER_BYTE, unpack_codes
from .direct_conv import DIRECT_KERNELS, direct_plan
from .im2col import conv_output_size
from .operands import check_activations
from .packed import PackedLayer, as_int8_layer
from .packed_checks import ACCUMULATOR_MAX
from .simd import (
    BYTES,
    HAS_F16C,
    LANES,
    add_loaded,
    add_scaled,
    affine,
    broadcast_quad,
    decode_codes,
    dot4,
    float_zeros,
    int_add_scaled,
    int_sub,
    int_zeros,
    load_bytes,
    relu_lanes,
    store_floats,
    store_quantized,
)

QUAD = CODES_PER_BYTE  # reduction positions per dot4 lane (vpdpbusd sums 4 products)
TILE = LANES  # outputs per tile
ROW_BLOCK = 8  # rows per step of the batched kernel on a single tile (unrolled below)
PAIR_ROW_BLOCK = 6  # rows per step on a pair of tiles
ROW_CHUNK = 64  # rows per parallel task: the tile's weights stay in L1/L2 across its steps
TILE_GROUP = 4  # tiles per GEMV task (unrolled below); scales, offsets and codes are stored per group of 4
GROUP_LANES = TILE_GROUP * TILE
GEMV_MAX_ROWS = 3  # fewer rows read the 2-bit codes, more the int8 weights (about even at 3 rows)
SIGNED_OFFSET = 128  # int8 activations x are fed as the unsigned bytes x + 128
QUAD_BYTES = np.uint64(BYTES)  # one quad's weight vector, as the unsigned loops index it
NO_FLOATS = np.empty(0, dtype=np.float32)  # the batched kernel's "no residual"
NO_INTEGERS = np.empty(0, dtype=np.uint8)  # and "no requantized outputs"


@njit(cache=True, parallel=True)
def batched_kernel(x_flat, row_starts, quad_offsets, weights, scales, offsets, group_ends, signed, bias, act_scale,
                   residual, relu, keep_floats, integers, integer_starts, next_scale, next_max, out):
    """Row m's quad q (reduction positions 4q..4q+3) is the 4 bytes at ``x_flat[row_starts[m] +
    quad_offsets[q]:]``: a matrix's rows (offsets 4q), or a padded NHWC image read in place by a
    convolution (implicit GEMM: no im2col columns are written).
    ``residual`` (fp32, flat, laid out like ``out``; empty: none) is added to the outputs and ``relu``
    applied as they are stored: the graph's add and ReLU after the layer, without another pass.
    ``integers`` (uint8, flat; empty: none): the outputs also stored as the next layer's unsigned input,
    row m's at ``integer_starts[m]``, rounded to steps of ``next_scale`` up to ``next_max``; the fp32
    outputs only if ``keep_floats``.

    Tiles run in pairs (an odd last tile alone): each input quad loaded feeds both tiles' dot
    products, which takes the loads per ``dot4`` from 9 in 8 to 8 in 12."""
    rows = row_starts.shape[0]
    tiles = weights.shape[0]
    pairs = (tiles + 1) // 2
    chunks = (rows + ROW_CHUNK - 1) // ROW_CHUNK
    width = out.shape[1]
    add_residual, requantize = residual.size > 0, integers.size > 0  # empty arrays: one compiled variant
    out_flat = out.ravel()
    for task in prange(chunks * pairs):
        chunk, tile = task // pairs, 2 * (task % pairs)
        first, last = chunk * ROW_CHUNK, min((chunk + 1) * ROW_CHUNK, rows)
        if tile + 1 < tiles:  # 6 rows per step: 24 accumulators in registers (8 rows spill)
            w, s, c = weights[tile].ravel(), scales[tile].ravel(), offsets[tile].ravel()
            v, u, d = weights[tile + 1].ravel(), scales[tile + 1].ravel(), offsets[tile + 1].ravel()
            for r in range(first, last, PAIR_ROW_BLOCK):
                # rows past the end repeat the last row; their results are not stored
                x0, x1 = row_starts[min(r, rows - 1)], row_starts[min(r + 1, rows - 1)]
                x2, x3 = row_starts[min(r + 2, rows - 1)], row_starts[min(r + 3, rows - 1)]
                x4, x5 = row_starts[min(r + 4, rows - 1)], row_starts[min(r + 5, rows - 1)]
                f0, f1, f2, f3 = float_zeros(), float_zeros(), float_zeros(), float_zeros()
                f4, f5 = float_zeros(), float_zeros()
                h0, h1, h2, h3 = float_zeros(), float_zeros(), float_zeros(), float_zeros()
                h4, h5 = float_zeros(), float_zeros()
                start = 0
                for g in range(group_ends.shape[0]):
                    a0, a1, a2, a3, a4, a5 = int_zeros(), int_zeros(), int_zeros(), int_zeros(), int_zeros(), \
                        int_zeros()
                    b0, b1, b2, b3, b4, b5 = int_zeros(), int_zeros(), int_zeros(), int_zeros(), int_zeros(), \
                        int_zeros()
                    for q in range(np.uint64(start), np.uint64(group_ends[g])):  # unsigned: no wraparound check
                        wq, vq, j = load_bytes(w, q * QUAD_BYTES), load_bytes(v, q * QUAD_BYTES), quad_offsets[q]
                        i0, i1, i2 = broadcast_quad(x_flat, x0 + j), broadcast_quad(x_flat, x1 + j), \
                            broadcast_quad(x_flat, x2 + j)
                        i3, i4, i5 = broadcast_quad(x_flat, x3 + j), broadcast_quad(x_flat, x4 + j), \
                            broadcast_quad(x_flat, x5 + j)
                        a0, a1, a2 = dot4(a0, i0, wq), dot4(a1, i1, wq), dot4(a2, i2, wq)
                        a3, a4, a5 = dot4(a3, i3, wq), dot4(a4, i4, wq), dot4(a5, i5, wq)
                        b0, b1, b2 = dot4(b0, i0, vq), dot4(b1, i1, vq), dot4(b2, i2, vq)
                        b3, b4, b5 = dot4(b3, i3, vq), dot4(b4, i4, vq), dot4(b5, i5, vq)
                    gs = g * TILE
                    if signed:
                        a0, a1, a2 = int_sub(a0, c, gs), int_sub(a1, c, gs), int_sub(a2, c, gs)
                        a3, a4, a5 = int_sub(a3, c, gs), int_sub(a4, c, gs), int_sub(a5, c, gs)
                        b0, b1, b2 = int_sub(b0, d, gs), int_sub(b1, d, gs), int_sub(b2, d, gs)
                        b3, b4, b5 = int_sub(b3, d, gs), int_sub(b4, d, gs), int_sub(b5, d, gs)
                    f0, f1, f2 = add_scaled(f0, a0, s, gs), add_scaled(f1, a1, s, gs), add_scaled(f2, a2, s, gs)
                    f3, f4, f5 = add_scaled(f3, a3, s, gs), add_scaled(f4, a4, s, gs), add_scaled(f5, a5, s, gs)
                    h0, h1, h2 = add_scaled(h0, b0, u, gs), add_scaled(h1, b1, u, gs), add_scaled(h2, b2, u, gs)
                    h3, h4, h5 = add_scaled(h3, b3, u, gs), add_scaled(h4, b4, u, gs), add_scaled(h5, b5, u, gs)
                    start = group_ends[g]
                for i, f in enumerate((f0, f1, f2, f3, f4, f5, h0, h1, h2, h3, h4, h5)):
                    row, column = r + i % PAIR_ROW_BLOCK, (tile + i // PAIR_ROW_BLOCK) * TILE
                    if row < rows:
                        y, at = affine(f, act_scale, bias, column), row * width + column
                        if add_residual:  # the graph's add, then its ReLU, in registers
                            y = add_loaded(y, residual, at)
                        if relu:
                            y = relu_lanes(y)
                        if keep_floats:
                            store_floats(out_flat, at, y)
                        if requantize:
                            store_quantized(integers, integer_starts[row] + column, y, next_scale, next_max)
        else:  # an odd last tile: 8 rows per step
            w, s, c = weights[tile].ravel(), scales[tile].ravel(), offsets[tile].ravel()
            for r in range(first, last, ROW_BLOCK):
                x0, x1 = row_starts[min(r, rows - 1)], row_starts[min(r + 1, rows - 1)]
                x2, x3 = row_starts[min(r + 2, rows - 1)], row_starts[min(r + 3, rows - 1)]
                x4, x5 = row_starts[min(r + 4, rows - 1)], row_starts[min(r + 5, rows - 1)]
                x6, x7 = row_starts[min(r + 6, rows - 1)], row_starts[min(r + 7, rows - 1)]
                f0, f1, f2, f3 = float_zeros(), float_zeros(), float_zeros(), float_zeros()
                f4, f5, f6, f7 = float_zeros(), float_zeros(), float_zeros(), float_zeros()
                start = 0
                for g in range(group_ends.shape[0]):
                    a0, a1, a2, a3 = int_zeros(), int_zeros(), int_zeros(), int_zeros()
                    a4, a5, a6, a7 = int_zeros(), int_zeros(), int_zeros(), int_zeros()
                    for q in range(np.uint64(start), np.uint64(group_ends[g])):
                        wq, j = load_bytes(w, q * QUAD_BYTES), quad_offsets[q]
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
                        y, at = affine(f, act_scale, bias, column), (r + i) * width + column
                        if add_residual:
                            y = add_loaded(y, residual, at)
                        if relu:
                            y = relu_lanes(y)
                        if keep_floats:
                            store_floats(out_flat, at, y)
                        if requantize:
                            store_quantized(integers, integer_starts[r + i] + column, y, next_scale, next_max)


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
                    store_floats(out_flat, m * width + tile * TILE, affine(f, act_scale, bias, tile * TILE))


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
    in_channels: int

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
            in_channels=layer.in_channels,
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
            row_starts = np.arange(x.shape[0], dtype=np.int64) * x.shape[1]
            batched_kernel(x.ravel(), row_starts, matrix_quad_offsets(quads), self.weights, self.scales, self.offsets,
                           self.group_ends, signed, self.bias, np.float32(act_scale), NO_FLOATS, False, True,
                           NO_INTEGERS, row_starts, np.float32(1), np.float32(0), out)
        return self._outputs(out)

    def conv(self, padded: np.ndarray, kernel_size: tuple[int, int], stride: tuple[int, int],
             dilation: tuple[int, int], act_scale: float, residual: np.ndarray | None = None,
             relu: bool = False) -> np.ndarray:
        """fp32 NHWC outputs [B, OH, OW, K] of the convolution of integer NHWC activations, already
        zero-padded (:meth:`.ActivationFormat.quantize` with ``padding``), read in place: the ``gemm``
        of the im2col columns, bit for bit, without writing them. Input channels in whole quads.
        ``residual`` (fp32 [B, OH, OW, K]) is added to the outputs, then ``relu`` applied."""
        floats, _ = self._conv(padded, kernel_size, stride, dilation, act_scale, residual, relu)
        return floats

    def conv_requantized(self, padded: np.ndarray, kernel_size: tuple[int, int], stride: tuple[int, int],
                         dilation: tuple[int, int], act_scale: float, residual: np.ndarray | None, relu: bool,
                         next_input: ActivationFormat, next_padding: tuple[int, int],
                         keep_floats: bool) -> tuple[np.ndarray | None, np.ndarray]:
        """:meth:`conv`, its outputs also stored as the next layers' integer input (unsigned
        ``next_input``, zero-padded by ``next_padding``: what ``next_input.quantize`` would give),
        the fp32 outputs only if ``keep_floats`` (else None). Needs K in whole tiles of 16."""
        if next_input.signed or self.out_channels % TILE:
            raise ValueError(f"requantized outputs need an unsigned next input and whole tiles of {TILE} outputs, "
                             f"got signed={next_input.signed}, {self.out_channels} outputs")
        return self._conv(padded, kernel_size, stride, dilation, act_scale, residual, relu,
                          (next_input, next_padding, keep_floats))

    def _conv(self, padded, kernel_size, stride, dilation, act_scale, residual, relu, requantize=None):
        batch, channels = padded.shape[0], padded.shape[3]
        if channels % QUAD or kernel_size[0] * kernel_size[1] * channels != self.weights.shape[1] * QUAD:
            raise ValueError(f"a {kernel_size[0]}x{kernel_size[1]} convolution over {channels} channels does not "
                             f"match the layer's {self.weights.shape[1] * QUAD} reduction positions in whole quads")
        (out_h, out_w), row_starts, quad_offsets = conv_addressing(padded.shape, kernel_size, stride, dilation)
        signed = padded.dtype == np.int8
        x = padded.view(np.uint8) ^ np.uint8(SIGNED_OFFSET) if signed else padded
        out = np.empty((row_starts.shape[0], self.weights.shape[0] * TILE), dtype=np.float32)
        if residual is not None:
            if residual.shape != (batch, out_h, out_w, self.out_channels) or residual.dtype != np.float32:
                raise ValueError(f"the residual must be fp32 {(batch, out_h, out_w, self.out_channels)}, got "
                                 f"{residual.dtype} {residual.shape}")
            residual = _padded_columns(residual.reshape(-1, self.out_channels), out.shape[1]).ravel()
        residual = NO_FLOATS if residual is None else residual
        keep_floats, integers, starts, next_scale, next_max = True, NO_INTEGERS, row_starts, np.float32(1), np.float32(0)
        if requantize is not None:
            next_input, (pad_h, pad_w), keep_floats = requantize
            integers = np.zeros((batch, out_h + 2 * pad_h, out_w + 2 * pad_w, self.out_channels), dtype=np.uint8)
            starts = padded_pixel_starts(integers.shape, pad_h, pad_w)
            next_scale, next_max = np.float32(next_input.scale), np.float32(next_input.integer_range[1])
        epilogue = (signed, self.bias, np.float32(act_scale), residual, relu, keep_floats, integers.ravel(), starts,
                    next_scale, next_max, out)
        direct = direct_plan(self.weights, self.group_ends, padded.shape, kernel_size, stride, dilation)
        if direct is None:
            batched_kernel(x.ravel(), row_starts, quad_offsets, self.weights, self.scales, self.offsets,
                           self.group_ends, *epilogue)
        else:
            kind, strip_starts, strip_rows = direct
            DIRECT_KERNELS[kind](x.ravel(), strip_starts, strip_rows, padded.shape[2] * channels, self.weights,
                                 self.scales, self.offsets, *epilogue)
        floats = self._outputs(out).reshape(batch, out_h, out_w, self.out_channels) if keep_floats else None
        return floats, None if requantize is None else integers

    def _outputs(self, out: np.ndarray) -> np.ndarray:
        """Without the padding outputs past K."""
        return out if out.shape[1] == self.out_channels else np.ascontiguousarray(out[:, :self.out_channels])


def _padded_columns(matrix: np.ndarray, width: int) -> np.ndarray:
    """``matrix`` [M, K] as a C-contiguous [M, width], zero columns past K (none to add: no copy)."""
    if matrix.shape[1] == width:
        return np.ascontiguousarray(matrix)
    padded = np.zeros((matrix.shape[0], width), dtype=matrix.dtype)
    padded[:, :matrix.shape[1]] = matrix
    return padded


def _pixel_starts(shape: tuple[int, int, int, int], first: tuple[int, int], step: tuple[int, int],
                  size: tuple[int, int]) -> np.ndarray:
    """The first byte, in the NHWC buffer ``shape``, of pixels (b, first_h + i * step_h, first_w +
    j * step_w) for i < size_h, j < size_w, in (b, i, j) order; read-only (cached by the callers)."""
    batch, height, width, channels = shape
    rows = np.arange(batch)[:, None, None] * height + first[0] + np.arange(size[0])[None, :, None] * step[0]
    starts = ((rows * width + first[1] + np.arange(size[1])[None, None, :] * step[1]) * channels).ravel()
    starts = starts.astype(np.int64)
    starts.flags.writeable = False
    return starts


@lru_cache(maxsize=256)
def padded_pixel_starts(shape: tuple[int, int, int, int], pad_h: int, pad_w: int) -> np.ndarray:
    """Each output pixel's first byte in the zero-padded NHWC buffer ``shape`` of the next layer's input."""
    return _pixel_starts(shape, (pad_h, pad_w), (1, 1), (shape[1] - 2 * pad_h, shape[2] - 2 * pad_w))


@lru_cache(maxsize=256)
def conv_addressing(shape: tuple[int, int, int, int], kernel_size: tuple[int, int], stride: tuple[int, int],
                     dilation: tuple[int, int]) -> tuple[tuple[int, int], np.ndarray, np.ndarray]:
    """Output size, each output pixel's first input byte in a padded NHWC input, and each quad's
    offset from it (the quads in reduction order: kernel position, then channel): computed once per
    shape, not per call. Channels in whole quads."""
    _, height, width, channels = shape
    if channels % QUAD:
        raise ValueError(f"the tiled kernels read whole quads of {QUAD} channels, got {channels} channels")
    (rows, cols), (dil_h, dil_w) = kernel_size, dilation
    out_h = conv_output_size(height, rows, stride[0], 0, dil_h)
    out_w = conv_output_size(width, cols, stride[1], 0, dil_w)
    if out_h < 1 or out_w < 1:
        raise ValueError(f"a {rows}x{cols} kernel with dilation {dilation} does not fit a padded {height}x{width} "
                         f"input")
    positions = np.arange(rows)[:, None] * dil_h * width + np.arange(cols)[None, :] * dil_w
    quad_offsets = (positions.reshape(-1, 1) * channels + np.arange(0, channels, QUAD)).ravel().astype(np.int64)
    quad_offsets.flags.writeable = False  # shared by every call with this shape
    return (out_h, out_w), _pixel_starts(shape, (0, 0), stride, (out_h, out_w)), quad_offsets


@lru_cache(maxsize=256)
def matrix_quad_offsets(quads: int) -> np.ndarray:
    """Quad q of a matrix row starts at byte 4q."""
    offsets = np.arange(0, quads * QUAD, QUAD, dtype=np.int64)
    offsets.flags.writeable = False
    return offsets


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
