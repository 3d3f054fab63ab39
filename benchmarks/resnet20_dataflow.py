"""Time the whole pretrained CIFAR ResNet-20 through IntegerNet against ONNX Runtime int8 and torch int8,
interleaved in one process (1 thread each): the ratios the kernels README quotes for the dataflow
changes (convs read in place, fused epilogues, integer hand-over between convs). Each candidate's
rate in weight multiply-accumulates per second is printed beside this core's ``vpdpbusd`` peak
(12 independent accumulator chains in registers: no loads), the roofline the kernels answer to.

Run: OMP_NUM_THREADS=1 python benchmarks/resnet20_dataflow.py [--batch 1 --group-size 64 --scales fp32 --rounds 200]
"""

import argparse
import statistics
import time

import numba
import numpy as np
import torch
from numba import njit

from fgq_pipeline.bench.workloads import network_workload
from fgq_pipeline.kernels.simd import (
    HAS_VNNI,
    add_scaled,
    affine,
    dot4,
    float_zeros,
    load_bytes,
    store_floats,
)

CHECKPOINT = "../shared/models/cifar10/resnet20-12fca82f.th"  # random weights where it is absent
CANDIDATES = {"numba": "numba_ternary", "onnxruntime int8": "onnxruntime_int8", "torch int8": "torch_int8"}


@njit
def _dot4_chains(seeds, weights, iterations, scales, bias, out):
    """12 dependent chains of dot4, distinct so that none is folded into another; the result is stored."""
    w = load_bytes(weights, 0)
    a0, a1, a2, a3 = load_bytes(seeds, 0), load_bytes(seeds, 64), load_bytes(seeds, 128), load_bytes(seeds, 192)
    a4, a5, a6, a7 = load_bytes(seeds, 256), load_bytes(seeds, 320), load_bytes(seeds, 384), load_bytes(seeds, 448)
    a8, a9, a10, a11 = load_bytes(seeds, 512), load_bytes(seeds, 576), load_bytes(seeds, 640), load_bytes(seeds, 704)
    x = load_bytes(seeds, 768)
    for _ in range(iterations):
        a0, a1, a2, a3 = dot4(a0, x, w), dot4(a1, x, w), dot4(a2, x, w), dot4(a3, x, w)
        a4, a5, a6, a7 = dot4(a4, x, w), dot4(a5, x, w), dot4(a6, x, w), dot4(a7, x, w)
        a8, a9, a10, a11 = dot4(a8, x, w), dot4(a9, x, w), dot4(a10, x, w), dot4(a11, x, w)
    total = float_zeros()
    for chain in (a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11):
        total = add_scaled(total, chain, scales, 0)
    store_floats(out, 0, affine(total, np.float32(1), bias, 0))


def dot4_peak_macs_per_second(iterations: int = 2_000_000) -> float:
    rng = np.random.default_rng(0)
    seeds, weights = rng.integers(0, 256, 832).astype(np.uint8), rng.integers(-1, 2, 64).astype(np.int8)
    scales, bias, out = np.ones(16, np.float32), np.zeros(16, np.float32), np.zeros(16, np.float32)
    _dot4_chains(seeds, weights, 10, scales, bias, out)
    seconds = []
    for _ in range(7):
        start = time.perf_counter()
        _dot4_chains(seeds, weights, iterations, scales, bias, out)
        seconds.append(time.perf_counter() - start)
    return 12 * iterations * 64 / statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--scales", default="fp32", choices=["fp32", "fp16", "int8"], help="stored scale dtype")
    args = parser.parse_args()
    numba.set_num_threads(1)
    torch.set_num_threads(1)
    workload = network_workload(20, args.batch, args.group_size, CHECKPOINT, scale_dtype=args.scales)
    for set_threads in workload.on_threads:
        set_threads(1)
    calls = {label: workload.candidates[name] for label, name in CANDIDATES.items() if name in workload.candidates}
    times = {label: [] for label in calls}
    for call in calls.values():  # compile, warm caches
        call()
        call()
    for _ in range(args.rounds):
        for label, call in calls.items():
            start = time.perf_counter()
            call()
            times[label].append(time.perf_counter() - start)
    medians = {label: statistics.median(values) * 1e3 for label, values in times.items()}
    peak = dot4_peak_macs_per_second()
    print(f"ResNet-20, batch {args.batch}, N={args.group_size}, {args.scales} scales, medians of {args.rounds} "
          f"interleaved rounds:")
    for label, median in medians.items():
        rate = workload.weight_macs / (median / 1e3) / 1e9
        print(f"  {label:18s} {median:8.3f} ms   numba is {median / medians['numba']:.2f}x its speed   "
              f"{rate:6.1f} G weight-MAC/s")
    kind = "vpdpbusd" if HAS_VNNI else "dot4 without VNNI"
    print(f"  this core's {kind} peak (registers only): {peak / 1e9:.1f} G MAC/s")


if __name__ == "__main__":
    main()
