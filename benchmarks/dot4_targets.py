"""Time the whole pretrained CIFAR ResNet-20 through IntegerNet with the tiled kernels against the same
network on the general kernels only (what a CPU without AVX-512 VNNI ran before ``dot4`` had a
``vpmaddwd`` lowering), interleaved in one process, 1 thread; checks that both give identical logits.

Which ``dot4`` the tiled kernels get follows Numba's target CPU, so one machine can time the others'
code by pinning it (run each in its own cache directory; the host must have the pinned instructions):

    F=+avx2,+avx,+fma,+f16c,+sse4.2,+sse4.1,+ssse3,+popcnt,+bmi,+bmi2,+lzcnt,+movbe,+cx16
    NUMBA_CACHE_DIR=/tmp/nc-avx2 NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES=$F python benchmarks/dot4_targets.py
    NUMBA_CACHE_DIR=/tmp/nc-bw NUMBA_CPU_NAME=skylake-avx512 \
        NUMBA_CPU_FEATURES=$F,+avx512f,+avx512bw,+avx512dq,+avx512vl,+avx512cd python benchmarks/dot4_targets.py
    python benchmarks/dot4_targets.py                   # the host's own target
"""

import argparse
import statistics
import time

import numpy as np
import torch

from fgq_pipeline.bench.workloads import NUMBA, network_workload
from fgq_pipeline.kernels import integer_net, simd

CHECKPOINT = "../shared/models/cifar10/resnet20-12fca82f.th"  # random weights where it is absent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=30,
                        help="timed calls per kernel choice at batch 1 (a fifth of them at batch 64)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    lowering, fast = simd.dot4_lowering()
    feature = next((feature for feature, fast_lowering in simd.FAST_LOWERINGS if fast_lowering is lowering), None)
    print(f"dot4 on this target: {feature or 'plain vector IR'} (tiled kernels {'on' if fast else 'off'})")
    for batch in (1, 64):
        tiled = network_workload(20, batch, args.group_size, CHECKPOINT).candidates[NUMBA]
        integer_net.FAST_DOT4 = False  # the next net loads every layer on the general kernels
        general = network_workload(20, batch, args.group_size, CHECKPOINT).candidates[NUMBA]
        integer_net.FAST_DOT4 = fast
        identical = np.array_equal(tiled(), general())
        times = {"tiled": [], "general": []}
        for _ in range(args.rounds if batch == 1 else max(args.rounds // 5, 3)):
            for name, call in (("tiled", tiled), ("general", general)):
                started = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - started)
        tiled_ms, general_ms = (1e3 * statistics.median(times[name]) for name in ("tiled", "general"))
        print(f"batch {batch:2d}: tiled {tiled_ms:8.2f} ms  general only {general_ms:8.2f} ms  "
              f"{general_ms / tiled_ms:5.1f}x  identical logits: {identical}")


if __name__ == "__main__":
    main()
