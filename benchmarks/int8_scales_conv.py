"""Time a ResNet-50 3x3 conv (256 -> 256 @ 14x14) at N=4 with int8 scales: the int8-weight path
(t * q, one fp32 multiply per filter) against the per-group fp32 path it replaced, and torch int8.

The old path is timed as the same layer with its int8 scales decoded to fp32 (fl(q * sos)) at load:
exactly what the batched kernel used to read, one convert and fp32 multiply-add per group.
Run: OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/int8_scales_conv.py [--batch 16 --runs 20]
"""

import argparse
import dataclasses
import statistics
import time

import numpy as np
import torch
from torch import nn

from fgq_pipeline.bench.workloads import _int8_conv
from fgq_pipeline.kernels import ActivationFormat, pack_ternary_layer
from fgq_pipeline.kernels.im2col import im2col
from fgq_pipeline.kernels.tiled_gemm import TiledLayer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    channels, side = 256, 14
    codes = rng.integers(-1, 2, (channels, channels, 3, 3)).astype(np.int8)
    filter_gain = 10.0 ** rng.uniform(-2, 1, (channels, 1, 1, 1))  # folded BatchNorms spread the filters
    scales = (rng.uniform(0.5, 1.5, (channels, channels // 4, 3, 3)) * filter_gain).astype(np.float32)
    x = torch.relu(torch.randn(args.batch, channels, side, side))
    activation = ActivationFormat(scale=float(x.max()) / 255, bits=8, signed=False)
    layer = pack_ternary_layer("conv", codes, scales, 4, np.zeros(channels, np.float32), activation, (1, 1), (1, 1),
                               scale_dtype="int8")
    old = dataclasses.replace(layer, scales=layer.fp32_scales, scale_dtype="fp32", scale_of_scales=None)
    new_tiled, old_tiled = TiledLayer.from_packed(layer), TiledLayer.from_packed(old)
    nhwc = np.ascontiguousarray(x.numpy().transpose(0, 2, 3, 1))
    columns, _ = im2col(activation.quantize(nhwc), (3, 3), (1, 1), (1, 1), (1, 1))
    conv = nn.Conv2d(channels, channels, 3, padding=1)
    int8 = _int8_conv(conv, x)

    def layer_call(tiled):
        return lambda: tiled.gemm(im2col(activation.quantize(nhwc), (3, 3), (1, 1), (1, 1), (1, 1))[0], activation.scale)

    candidates = {
        "new GEMM (int8 weights t*q)": lambda: new_tiled.gemm(columns, activation.scale),
        "old GEMM (per-group fp32)": lambda: old_tiled.gemm(columns, activation.scale),
        "new layer (quantize+im2col+GEMM)": layer_call(new_tiled),
        "old layer (quantize+im2col+GEMM)": layer_call(old_tiled),
        "torch int8 conv (quantize+conv+dequantize)": int8,
        "torch fp32 conv": lambda: conv(x),
    }
    times = {name: [] for name in candidates}
    with torch.no_grad():
        for name, fn in candidates.items():
            fn()
        for _ in range(args.runs):  # interleaved rounds: machine noise hits every candidate alike
            for name, fn in candidates.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    new_out, old_out = new_tiled.gemm(columns, activation.scale), old_tiled.gemm(columns, activation.scale)
    print(f"batch {args.batch}, {columns.shape[0]} rows x {columns.shape[1]} x {channels}, {args.runs} rounds, 1 thread")
    medians = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    for name, ms in medians.items():
        print(f"{name:45s} {ms:9.2f} ms")
    print(f"old/new GEMM {medians['old GEMM (per-group fp32)'] / medians['new GEMM (int8 weights t*q)']:.2f}x, "
          f"torch int8 / new layer {medians['torch int8 conv (quantize+conv+dequantize)'] / medians['new layer (quantize+im2col+GEMM)']:.2f}x, "
          f"torch int8 / old layer {medians['torch int8 conv (quantize+conv+dequantize)'] / medians['old layer (quantize+im2col+GEMM)']:.2f}x")
    print(f"max |new - old| / max |old| = {np.abs(new_out - old_out).max() / np.abs(old_out).max():.2e}")


if __name__ == "__main__":
    main()
