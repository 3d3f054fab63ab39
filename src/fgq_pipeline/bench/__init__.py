"""Measured speed of the integer path: Numba ternary kernels side by side with torch fp32 and int8
and ONNX Runtime int8."""

from fgq_pipeline.bench.timing import Timing, background_cpus, time_interleaved
from fgq_pipeline.bench.workloads import (
    Workload,
    conv_workload,
    linear_workload,
    network_workload,
    torchvision_workload,
)

__all__ = [
    "Timing", "Workload", "background_cpus", "conv_workload", "linear_workload", "network_workload",
    "time_interleaved", "torchvision_workload",
]
