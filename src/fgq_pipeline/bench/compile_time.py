"""Numba compile time of the integer path, and the time to load the compiled kernels from Numba's
on-disk cache, each measured in a fresh interpreter with its own empty cache directory."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

# The first forward of a small network whose layers take every kernel of the integer path: input
# quantization, im2col, the tiled batched kernel (conv, 81 rows, handing its outputs to conv2 as integers;
# conv2 with a fused ReLU; int8 fc2) and GEMV kernel (fc1 at batch 1), and for layers without whole quads of
# weights the general ternary GEMM's batched and row paths (conv0, 3 input channels: one block of 64 rows
# and 17 left) and the int8 GEMM (fc3, 6 inputs). That network runs node by node (conv0 is not tiled); its
# convs alone, to the pool's flattened outputs, run as a compiled pass (which compiles every step it has).
FIRST_CALL_PROBE = """
import time, numpy as np
from fgq_pipeline.kernels import ActivationFormat, IntegerNet, PackedModel, pack_int8_layer, pack_ternary_layer
act, zeros, wide = ActivationFormat(0.1, 8, False), np.zeros(8, np.float32), np.zeros(16, np.float32)
layers = [
    pack_ternary_layer("conv0", np.ones((8, 3, 3, 3), np.int8), np.ones((8, 1, 3, 3), np.float32), 3, zeros, act,
                       (1, 1), (1, 1)),
    pack_ternary_layer("conv", np.ones((16, 8, 3, 3), np.int8), np.ones((16, 2, 3, 3), np.float32), 4, wide, act,
                       (1, 1), (1, 1)),
    pack_ternary_layer("conv2", np.ones((16, 16, 3, 3), np.int8), np.ones((16, 4, 3, 3), np.float32), 4, wide, act,
                       (1, 1), (1, 1)),
    pack_ternary_layer("fc1", np.ones((8, 16), np.int8), np.ones((8, 2), np.float32), 8, zeros, act),
    pack_int8_layer("fc2", np.ones((6, 8), np.int8), np.ones(6, np.float32), zeros[:6], act),
    pack_int8_layer("fc3", np.ones((4, 6), np.int8), np.ones(4, np.float32), zeros[:4], act),
]
ops = [("conv", "conv0"), ("relu", None), ("conv", "conv"), ("relu", None), ("conv", "conv2"), ("relu", None),
       ("adaptive_avgpool", None),
       ("flatten", None), ("linear", "fc1"), ("linear", "fc2"), ("linear", "fc3")]
graph = [{"op": "input", "inputs": [], "output": "v0"}] + [
    {"op": op, "inputs": [f"v{i}"], "output": f"v{i + 1}"} | ({"layer": layer} if layer else {})
    | ({"output_size": [1, 1]} if op == "adaptive_avgpool" else {}) for i, (op, layer) in enumerate(ops)]
net = IntegerNet(PackedModel({layer.name: layer for layer in layers}, graph))
convs = [graph[0], {**graph[3], "inputs": ["v0"]}, *graph[4:9]]
compiled = IntegerNet(PackedModel({layer.name: layer for layer in layers[1:3]}, convs))
start = time.perf_counter()
net(np.ones((1, 3, 9, 9), np.float32))
compiled(np.ones((1, 8, 9, 9), np.float32))
print(time.perf_counter() - start)
"""


def compile_and_cache_load_seconds() -> tuple[float, float]:
    """(first call with an empty cache: compilation, first call with the cache that left: loading)."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        seconds = []
        for _ in range(2):
            probe = subprocess.run([sys.executable, "-c", FIRST_CALL_PROBE], env=env, capture_output=True, text=True,
                                   check=False)
            if probe.returncode != 0:
                raise RuntimeError(f"the Numba compile-time probe failed:\n{probe.stderr[-2000:]}")
            seconds.append(float(probe.stdout.split()[-1]))
    return seconds[0], seconds[1]
