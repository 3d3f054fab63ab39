"""Numba kernel compile time, and the time to load the compiled kernel from Numba's on-disk cache,
each measured in a fresh interpreter with its own empty cache directory."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

FIRST_CALL_PROBE = """
import time, numpy as np
from fgq_pipeline.kernels import ternary_gemm
start = time.perf_counter()
ternary_gemm(np.zeros((1, 8), np.uint8), np.zeros((2, 2), np.uint8), np.ones((2, 2), np.float32),
             np.zeros(2, np.float32), 1.0, 8, 4)
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
