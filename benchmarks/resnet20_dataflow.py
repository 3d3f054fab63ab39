"""Time the whole pretrained CIFAR ResNet-20 through IntegerNet against ONNX Runtime int8 and torch int8,
interleaved in one process (1 thread each): the ratios the kernels README quotes for the dataflow
changes (convs read in place, fused epilogues, integer hand-over between convs). Each candidate's
rate in weight multiply-accumulates per second is printed beside this core's ceilings for the batched
kernel's arithmetic (``fgq_pipeline.bench.ceilings``: its instructions in registers, no loads).

Run: OMP_NUM_THREADS=1 python benchmarks/resnet20_dataflow.py [--batch 1 --group-size 64 --scales fp32 --rounds 200]
"""

import argparse
import statistics
import time

import numba
import torch

from fgq_pipeline.bench.ceilings import kernel_ceilings
from fgq_pipeline.bench.workloads import network_workload

CHECKPOINT = "../shared/models/cifar10/resnet20-12fca82f.th"  # random weights where it is absent
CANDIDATES = {"numba": "numba_ternary", "onnxruntime int8": "onnxruntime_int8", "torch int8": "torch_int8"}


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
    ceilings = kernel_ceilings()
    print(f"ResNet-20, batch {args.batch}, N={args.group_size}, {args.scales} scales, medians of {args.rounds} "
          f"interleaved rounds:")
    for label, median in medians.items():
        rate = workload.weight_macs / (median / 1e3) / 1e9
        print(f"  {label:18s} {median:8.3f} ms   numba is {median / medians['numba']:.2f}x its speed   "
              f"{rate:6.1f} G weight-MAC/s")
    for label, rate in ceilings.items():
        print(f"  this core's ceiling, {label} (registers only): {rate:.1f} G MAC/s")


if __name__ == "__main__":
    main()
