"""Where the batched tiled kernel loses to torch int8 on a large 3x3 conv with int8 scales (one group per
filter, so the ceiling in reports/bench.md is the int8 one): the layer's call taken apart, 1 thread,
every candidate interleaved in one process, medians.

* the whole call (``IntegerNet.run_layer``: quantize the input, run the kernel) and torch int8, as the
  bench times them;
* the input's quantization alone, and the kernel alone on the quantized input;
* the kernel with a wider register block (4 tiles x 6 rows instead of a pair of tiles: 10 vector loads
  per 24 ``vpdpbusd`` instead of 8 per 12), defined here only to be timed; its outputs must be identical;
* the ceilings of ``bench/ceilings.py`` (the pair kernel's ``vpdpbusd`` chains and float updates, operands
  in registers), on this host;
* the kernel on the first 64 to all of the reduction's quads (the weights a tile pair streams per row
  step, from L1-sized to L2-sized), with the marginal rate of each step up: the cost per quad with the
  weights in L1 or L2, apart from the per-step epilogue;
* the pair kernel's inner loop alone (the same loads: 2 weight vectors and 6 broadcast input quads per 12
  ``vpdpbusd``) over 64 quads that stay in L1, repeated without an epilogue, and the same loop with the
  input quads in registers: what the loop's own loads cost against the in-register ceiling, with no
  cache miss and no group end.

    python benchmarks/batched_bound.py                  # ResNet-50 layer4.1.conv2 at batch 64
"""

import argparse
import statistics
import time

import numba
import numpy as np
import torch
from numba import njit, prange
from torch import nn

from fgq_pipeline.bench.ceilings import kernel_ceilings
from fgq_pipeline.bench.workloads import INT8, NUMBA, conv_workload
from fgq_pipeline.kernels.export import pack_quant_layer
from fgq_pipeline.kernels.simd import (
    add_scaled,
    affine,
    broadcast_quad,
    dot4,
    float_zeros,
    int_zeros,
    load_bytes,
    store_floats,
)
from fgq_pipeline.kernels.tiled_gemm import (
    NO_FLOATS,
    NO_INTEGERS,
    QUAD_BYTES,
    ROW_CHUNK,
    TILE,
    TiledLayer,
    batched_kernel,
    conv_addressing,
)
from fgq_pipeline.quant.activation import ActQuantizer
from fgq_pipeline.quant.modules import QuantConv2d, WeightFormat
from fgq_pipeline.quant.repair import calibrate_activations

WIDE_TILES, WIDE_ROWS = 4, 6


@njit
def _zero_rows():
    return int_zeros(), int_zeros(), int_zeros(), int_zeros(), int_zeros(), int_zeros()


@njit
def _dot_rows(sums, quads, weights):
    """One tile's weight vector against the quads of 6 rows: the 6 rows' sums, each with one more dot4."""
    return (dot4(sums[0], quads[0], weights), dot4(sums[1], quads[1], weights), dot4(sums[2], quads[2], weights),
            dot4(sums[3], quads[3], weights), dot4(sums[4], quads[4], weights), dot4(sums[5], quads[5], weights))


@njit
def _row_quads(x_flat, starts, offset):
    """The quad at ``offset`` of each of 6 rows (``starts``), broadcast to every lane."""
    return (broadcast_quad(x_flat, starts[0] + offset), broadcast_quad(x_flat, starts[1] + offset),
            broadcast_quad(x_flat, starts[2] + offset), broadcast_quad(x_flat, starts[3] + offset),
            broadcast_quad(x_flat, starts[4] + offset), broadcast_quad(x_flat, starts[5] + offset))


@njit(cache=True, parallel=True)
def wide_block_kernel(x_flat, row_starts, quad_offsets, weights, scales, bias, act_scale, out):
    """``batched_kernel`` for one group per filter and unsigned inputs, 4 tiles x 6 rows per step."""
    rows, tiles, quads = row_starts.shape[0], weights.shape[0], weights.shape[1]
    blocks, chunks = tiles // WIDE_TILES, (rows + ROW_CHUNK - 1) // ROW_CHUNK
    width, out_flat = out.shape[1], out.ravel()
    for task in prange(chunks * blocks):
        chunk, tile = task // blocks, WIDE_TILES * (task % blocks)
        first, last = chunk * ROW_CHUNK, min((chunk + 1) * ROW_CHUNK, rows)
        w0, w1, w2, w3 = (weights[tile].ravel(), weights[tile + 1].ravel(), weights[tile + 2].ravel(),
                          weights[tile + 3].ravel())
        for r in range(first, last, WIDE_ROWS):
            x0, x1 = row_starts[min(r, rows - 1)], row_starts[min(r + 1, rows - 1)]
            x2, x3 = row_starts[min(r + 2, rows - 1)], row_starts[min(r + 3, rows - 1)]
            x4, x5 = row_starts[min(r + 4, rows - 1)], row_starts[min(r + 5, rows - 1)]
            a, b, c, d = _zero_rows(), _zero_rows(), _zero_rows(), _zero_rows()
            for q in range(np.uint64(0), np.uint64(quads)):
                quads_in = _row_quads(x_flat, (x0, x1, x2, x3, x4, x5), quad_offsets[q])
                a = _dot_rows(a, quads_in, load_bytes(w0, q * QUAD_BYTES))
                b = _dot_rows(b, quads_in, load_bytes(w1, q * QUAD_BYTES))
                c = _dot_rows(c, quads_in, load_bytes(w2, q * QUAD_BYTES))
                d = _dot_rows(d, quads_in, load_bytes(w3, q * QUAD_BYTES))
            for i, sums in enumerate(a + b + c + d):
                row, t = r + i % WIDE_ROWS, tile + i // WIDE_ROWS
                if row < rows:
                    total = add_scaled(float_zeros(), sums, scales[t].ravel(), 0)
                    store_floats(out_flat, row * width + t * TILE, affine(total, act_scale, bias, t * TILE))


L1_QUADS = 64  # 8 KB of a tile pair's weights and 6 rows' quads: L1-resident
UNIT_SCALES = np.ones(TILE, dtype=np.float32)


@njit
def _store_sums(sums, out):
    """Each int32 sum as fp32, one tile after another: nothing the loops compute is dead code."""
    for i, tile_sums in enumerate(sums):
        store_floats(out, i * TILE, add_scaled(float_zeros(), tile_sums, UNIT_SCALES, 0))


@njit(cache=True)
def l1_pair_loop(x_flat, row_starts, quad_offsets, w, v, repeats, out):
    """The pair kernel's inner loop (its loads and 12 ``dot4`` per quad) ``repeats`` times over the
    L1_QUADS quads of ``quad_offsets``, the 12 sums carried on and stored once."""
    a, b = _zero_rows(), _zero_rows()
    for _ in range(repeats):
        for q in range(np.uint64(0), np.uint64(L1_QUADS)):
            quads = _row_quads(x_flat, row_starts, quad_offsets[q])
            a = _dot_rows(a, quads, load_bytes(w, q * QUAD_BYTES))
            b = _dot_rows(b, quads, load_bytes(v, q * QUAD_BYTES))
    _store_sums(a + b, out)


@njit(cache=True)
def l1_pair_loop_inputs_in_registers(x_flat, row_starts, quad_offsets, w, v, repeats, out):
    """``l1_pair_loop`` with the 6 rows' input quads broadcast once, before the loop: only the two
    weight vectors are loaded per quad."""
    quads = _row_quads(x_flat, row_starts, quad_offsets[0])
    a, b = _zero_rows(), _zero_rows()
    for _ in range(repeats):
        for q in range(np.uint64(0), np.uint64(L1_QUADS)):
            a = _dot_rows(a, quads, load_bytes(w, q * QUAD_BYTES))
            b = _dot_rows(b, quads, load_bytes(v, q * QUAD_BYTES))
    _store_sums(a + b, out)


def _int8_scale_conv(name: str, channels: int, size: int, batch: int, group_size: int):
    """A packed 3x3 conv of the workload's shape (ternary N=``group_size``, int8 scales) and a ReLU'd input."""
    generator = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(channels, channels, 3, padding=1)
    nn.init.kaiming_normal_(conv.weight, generator=generator)
    x = torch.relu(torch.randn(batch, channels, size, size, generator=generator))
    quantized = QuantConv2d.from_float(conv, WeightFormat("ternary", group_size), ActQuantizer(8))
    calibrate_activations(nn.Sequential(quantized), [(x, None)])
    return pack_quant_layer(name, quantized, None, "int8"), np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())


def _median_ms(calls: dict, rounds: int) -> dict[str, float]:
    for call in calls.values():
        call()  # compile, warm the caches
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - started)
    return {name: 1e3 * statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--group-size", type=int, default=4, help="N (its int8 scales make one group per filter)")
    parser.add_argument("--rounds", type=int, default=21)
    args = parser.parse_args()
    numba.set_num_threads(1)
    torch.set_num_threads(1)
    name, channels, size, batch = "resnet50.layer4.1.conv2", 512, 7, 64
    workload = conv_workload(name, channels, channels, 3, 1, 1, size, batch, args.group_size, scale_dtype="int8")
    layer, x_nhwc = _int8_scale_conv(name, channels, size, batch, args.group_size)
    tiled = TiledLayer.from_packed(layer)
    padded = layer.activation.quantize(x_nhwc, layer.padding, tiled.in_channels)
    _, row_starts, quad_offsets = conv_addressing(padded.shape, layer.kernel_size, layer.stride, layer.dilation)
    x_flat, act_scale = padded.ravel(), np.float32(layer.activation.scale)
    pair_out = np.empty((row_starts.shape[0], tiled.weights.shape[0] * TILE), dtype=np.float32)
    wide_out = np.empty_like(pair_out)

    def pair(weights=tiled.weights, offsets=quad_offsets, group_ends=tiled.group_ends):
        batched_kernel(x_flat, row_starts, offsets, weights, tiled.scales, tiled.offsets, group_ends, False, tiled.bias,
                       act_scale, NO_FLOATS, False, True, NO_INTEGERS, row_starts, np.float32(1), np.float32(0),
                       pair_out)

    calls = {
        "whole call, as the bench times it": workload.candidates[NUMBA],
        "torch int8": workload.candidates[INT8],
        "input quantization alone": lambda: layer.activation.quantize(x_nhwc, layer.padding, tiled.in_channels),
        "pair kernel alone": pair,
        "4 x 6 block kernel alone": lambda: wide_block_kernel(x_flat, row_starts, quad_offsets, tiled.weights,
                                                                tiled.scales, tiled.bias, act_scale, wide_out),
    }
    pair()
    calls["4 x 6 block kernel alone"]()
    print(f"{name}, batch {batch}, N={args.group_size}, int8 scales, 1 thread; 4 x 6 block outputs identical: "
          f"{np.array_equal(pair_out, wide_out)}")
    for call_name, ms in _median_ms(calls, args.rounds).items():
        rate = "" if "quantization" in call_name else f"  {workload.weight_macs / ms / 1e6:7.1f} G weight-MAC/s"
        print(f"  {call_name:36s} {ms:8.3f} ms{rate}")
    print("ceilings (bench/ceilings.py: the pair kernel's arithmetic, operands in registers):")
    for label, rate in kernel_ceilings().items():
        print(f"  {label:36s} {rate:7.1f} G MAC/s")
    quads = tiled.weights.shape[1]
    l1_weights = [np.ascontiguousarray(tiled.weights[t, :L1_QUADS]).ravel() for t in (0, 1)]
    l1_offsets, l1_out = np.ascontiguousarray(quad_offsets[:L1_QUADS]), np.empty(12 * TILE, dtype=np.float32)
    repeats = quads * row_starts.shape[0] // (6 * L1_QUADS)  # as many dot4 per call as one tile pair's share
    l1_loops = {
        "its loads (2 weight vectors, 6 input broadcasts)": l1_pair_loop,
        "the weight loads only (inputs in registers)": l1_pair_loop_inputs_in_registers,
    }
    l1_calls = {label: lambda loop=loop: loop(x_flat, row_starts[:6], l1_offsets, *l1_weights, repeats, l1_out)
                for label, loop in l1_loops.items()}
    l1_macs = repeats * L1_QUADS * 12 * TILE * 4
    print(f"the pair kernel's inner loop on {L1_QUADS} L1-resident quads, repeated, no epilogue:")
    for label, ms in _median_ms(l1_calls, args.rounds).items():
        print(f"  {label:50s} {ms:8.3f} ms  {l1_macs / ms / 1e6:7.1f} G MAC/s")
    depths = {}
    for depth in (64, 128, 256, 512, quads):
        weights = np.ascontiguousarray(tiled.weights[:, :depth])
        offsets, group_ends = np.ascontiguousarray(quad_offsets[:depth]), np.array([depth], dtype=np.int64)
        depths[depth] = lambda w=weights, o=offsets, g=group_ends: pair(w, o, g)
    print("pair kernel on the first quads of the reduction (a tile pair's weights per row step); the marginal\n"
          "rate is that of the quads added since the previous line, without the per-step epilogue both share:")
    macs_per_quad = row_starts.shape[0] * tiled.weights.shape[0] * TILE * 4
    previous = None
    for depth, ms in _median_ms(depths, args.rounds).items():
        marginal = "" if previous is None else \
            f"  marginal {(depth - previous[0]) * macs_per_quad / (ms - previous[1]) / 1e6:7.1f} G MAC/s"
        print(f"  {depth:5d} quads ({2 * depth * 64 / 1024:6.1f} KB)  {ms:8.3f} ms  "
              f"{depth * macs_per_quad / ms / 1e6:7.1f} G MAC/s{marginal}")
        previous = depth, ms


if __name__ == "__main__":
    main()
