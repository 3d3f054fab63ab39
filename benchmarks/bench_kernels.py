"""Side by side: Numba ternary GEMV/GEMM vs torch fp32 F.linear vs torch int8 dynamic-quantized Linear,
on AlexNet's fc6 (9216 -> 4096) and fc7 (4096 -> 4096) shapes, at batch 1 and 64, 1 thread (the primary
figure) and 2 threads. Candidates run in interleaved rounds so machine noise hits all alike; each cell is
the median of the rounds with their min and max. Also reports the Numba kernel's compile time and its
load time from the on-disk cache, each measured in a fresh process.

Only the weights' shapes matter, so they are random. The ternary kernel takes activations already
rounded to uint8 ("kernel"); "+quantize" adds rounding the float input, which torch's dynamic int8
Linear does inside its call.

Run: python benchmarks/bench_kernels.py [--rounds 7] [--group-size 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable

import numba
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.quantization import quantize_dynamic

from fgq_pipeline.kernels import ActivationFormat, pack_ternary_layer, ternary_gemm

SHAPES = {"fc6": (9216, 4096), "fc7": (4096, 4096)}
BATCHES = (1, 64)
THREADS = (1, 2)
ACTIVATION = ActivationFormat(scale=0.05, bits=8, signed=False)
COMPILE_PROBE = """
import time, numpy as np
start = time.perf_counter()
from fgq_pipeline.kernels import ternary_gemm
imported = time.perf_counter()
x = np.zeros((1, 8), np.uint8); codes = np.zeros((2, 2), np.uint8)
ternary_gemm(x, codes, np.ones((2, 2), np.float32), np.zeros(2, np.float32), 1.0, 8, 4)
print(time.perf_counter() - imported)
"""


def candidates(in_features: int, out_features: int, batch: int, group_size: int
               ) -> dict[str, tuple[Callable[[], object], int]]:
    """(zero-argument call, weight bytes it reads) per implementation, on the same random layer and input."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(out_features, in_features, generator=generator) * 0.02
    x = torch.relu(torch.randn(batch, in_features, generator=generator))
    codes = torch.sign(weight) * (weight.abs() > 0.01)
    groups = in_features // group_size
    scales = np.full((out_features, groups), 0.02, dtype=np.float32)
    layer = pack_ternary_layer("fc", codes.to(torch.int8).numpy(), scales, group_size,
                               np.zeros(out_features, np.float32), ACTIVATION)
    x_float = x.numpy()
    x_int = ACTIVATION.quantize(x_float)
    args = (layer.weights, layer.fp32_scales, layer.bias, ACTIVATION.scale, in_features, group_size)
    linear = nn.Linear(in_features, out_features)
    with torch.no_grad():
        linear.weight.copy_(weight)
    with warnings.catch_warnings():  # torch.ao's eager-mode quantization warns that it moves to torchao
        warnings.simplefilter("ignore")
        int8_linear = quantize_dynamic(nn.Sequential(linear), {nn.Linear}, dtype=torch.qint8)
    ternary_bytes = layer.storage_bits // 8
    int8_bytes = weight.numel() + 4 * out_features  # int8 weights, one fp32 scale per row
    return {
        f"numba ternary N={group_size} kernel": (lambda: ternary_gemm(x_int, *args), ternary_bytes),
        f"numba ternary N={group_size} +quantize": (lambda: ternary_gemm(ACTIVATION.quantize(x_float), *args),
                                                    ternary_bytes),
        "torch fp32 F.linear": (lambda: F.linear(x, weight), 4 * weight.numel()),
        "torch int8 dynamic Linear": (lambda: int8_linear(x), int8_bytes),
    }


def time_interleaved(calls: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds per call, each round running every implementation once."""
    for call in calls.values():  # warm-up: compilation, allocator, packing caches
        call()
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    with torch.no_grad():
        for _ in range(rounds):
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                seconds[name].append(time.perf_counter() - start)
    return seconds


def compile_and_cache_load_seconds() -> tuple[float, float]:
    """First-call time with an empty Numba cache (compile), then again with the cache it left (load)."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        runs = [subprocess.run([sys.executable, "-c", COMPILE_PROBE], env=env, capture_output=True, text=True,
                               check=True) for _ in range(2)]
    return float(runs[0].stdout), float(runs[1].stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--group-size", type=int, default=4)
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (other processes inflate and scatter "
          f"the timings); numba {numba.__version__}, torch {torch.__version__}")
    compile_s, load_s = compile_and_cache_load_seconds()
    print(f"ternary_gemm (uint8 activations): compile {compile_s:.2f} s, load from cache {load_s:.3f} s\n")
    print(f"{'threads':>7} {'layer':>5} {'batch':>5}  {'implementation':<34} {'weights MB':>10} {'median ms':>9} "
          f"{'min':>8} {'max':>8}")
    for threads in THREADS:
        numba.set_num_threads(threads)
        torch.set_num_threads(threads)
        for layer, (in_features, out_features) in SHAPES.items():
            for batch in BATCHES:
                calls = candidates(in_features, out_features, batch, args.group_size)
                timings = time_interleaved({name: call for name, (call, _) in calls.items()}, args.rounds)
                for name, seconds in timings.items():
                    ms = [1e3 * s for s in seconds]
                    print(f"{threads:>7} {layer:>5} {batch:>5}  {name:<34} {calls[name][1] / 1e6:>10.1f} "
                          f"{statistics.median(ms):>9.2f} {min(ms):>8.2f} {max(ms):>8.2f}")
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}; {args.rounds} interleaved rounds per cell")


if __name__ == "__main__":
    main()
