"""What this core can do at best with the batched tiled kernel's arithmetic: the roofline its rates answer to.

The batched kernel keeps 12 int32 accumulators (a pair of 16-output tiles x 6 rows) and, at each group's
end, converts each to fp32, multiplies it by its scale and adds it to an fp32 total (no fused
multiply-add: the float order the torch twin follows). The same instructions, with every operand in
registers (no loads, no addressing), give the most it could reach for a group length:

* one group per filter (int8 weights, or ternary codes with int8 scales): ``dot4`` alone, an int8 GEMM;
* N=64 on 64 channels or more: 16 quads per group, then the 12 float updates;
* N=4: the float updates after every quad.

Where the float updates and ``vpdpbusd`` share the vector pipes, the ceilings fall with the group length;
an int8 runtime needs none of them. Measured, not assumed: each ceiling is timed here.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
from numba import njit

from ..kernels.simd import (
    HAS_VNNI,
    add_scaled,
    affine,
    dot4,
    float_zeros,
    int_zeros,
    load_bytes,
    store_floats,
)
from ..kernels.tiled_gemm import QUAD, TILE

CHAINS = 12  # the batched kernel's accumulators on a pair of tiles
PRODUCTS_PER_DOT4 = QUAD * TILE
INT8_WEIGHTS = "int8 weights (one group per filter)"
ROUNDS = 7


def ceiling_label(group_size: int, scales: str) -> str:
    """The ceiling a layer of N = ``group_size`` with ``scales`` answers to (at least N input channels):
    int8 scales make it an int8 layer; fp32 and fp16 scales are both applied as fp32 by the batched kernel."""
    return INT8_WEIGHTS if scales == "int8" else f"ternary N={group_size}, float scales"


GROUP_QUADS = {INT8_WEIGHTS: 4096, **{ceiling_label(n, "fp32"): n // QUAD for n in (64, 4)}}


@njit(cache=True)
def _accumulate(seeds, weights, groups, quads, scales, bias, out):
    """``groups`` x (``quads`` dot4 on each of 12 chains, then each chain's float update), all in registers.

    The chains start from distinct seeds and carry on across groups (the kernel restarts them at zero,
    which costs no execution unit): identical chains, or a group that repeats the last one, would let
    LLVM merge or hoist them."""
    w, x = load_bytes(weights, 0), load_bytes(seeds, 0)
    a0, a1, a2, a3 = load_bytes(seeds, 64), load_bytes(seeds, 128), load_bytes(seeds, 192), load_bytes(seeds, 256)
    a4, a5, a6, a7 = load_bytes(seeds, 320), load_bytes(seeds, 384), load_bytes(seeds, 448), load_bytes(seeds, 512)
    a8, a9, a10, a11 = load_bytes(seeds, 576), load_bytes(seeds, 640), load_bytes(seeds, 704), int_zeros()
    f0, f1, f2, f3, f4, f5 = float_zeros(), float_zeros(), float_zeros(), float_zeros(), float_zeros(), float_zeros()
    f6, f7, f8, f9, f10, f11 = float_zeros(), float_zeros(), float_zeros(), float_zeros(), float_zeros(), float_zeros()
    for _ in range(groups):
        for _ in range(quads):
            a0, a1, a2, a3 = dot4(a0, x, w), dot4(a1, x, w), dot4(a2, x, w), dot4(a3, x, w)
            a4, a5, a6, a7 = dot4(a4, x, w), dot4(a5, x, w), dot4(a6, x, w), dot4(a7, x, w)
            a8, a9, a10, a11 = dot4(a8, x, w), dot4(a9, x, w), dot4(a10, x, w), dot4(a11, x, w)
        f0, f1, f2, f3 = add_scaled(f0, a0, scales, 0), add_scaled(f1, a1, scales, 0), add_scaled(f2, a2, scales, 0), \
            add_scaled(f3, a3, scales, 0)
        f4, f5, f6, f7 = add_scaled(f4, a4, scales, 0), add_scaled(f5, a5, scales, 0), add_scaled(f6, a6, scales, 0), \
            add_scaled(f7, a7, scales, 0)
        f8, f9, f10, f11 = add_scaled(f8, a8, scales, 0), add_scaled(f9, a9, scales, 0), \
            add_scaled(f10, a10, scales, 0), add_scaled(f11, a11, scales, 0)
    for i, f in enumerate((f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11)):  # stored: nothing is dead code
        store_floats(out, i * TILE, affine(f, np.float32(1), bias, 0))


def _macs_per_second(quads: int, products: int) -> float:
    rng = np.random.default_rng(0)
    seeds, weights = rng.integers(0, 256, 768).astype(np.uint8), rng.integers(-1, 2, 64).astype(np.int8)
    scales, bias, out = np.ones(TILE, np.float32), np.zeros(TILE, np.float32), np.zeros(CHAINS * TILE, np.float32)
    groups = max(1, products // (CHAINS * quads * PRODUCTS_PER_DOT4))
    _accumulate(seeds, weights, 1, quads, scales, bias, out)  # compile
    seconds = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        _accumulate(seeds, weights, groups, quads, scales, bias, out)
        seconds.append(time.perf_counter() - start)
    return groups * quads * CHAINS * PRODUCTS_PER_DOT4 / statistics.median(seconds)


def kernel_ceilings(products: int = 2 * 10**10) -> dict[str, float]:
    """G multiply-accumulates per second on one core for each group length of GROUP_QUADS (about
    ``products`` / (50 G/s) seconds each); empty without AVX-512 VNNI, where ``dot4`` is plain vector
    code that LLVM may fold, so the figures would mean nothing."""
    if not HAS_VNNI:
        return {}
    return {label: _macs_per_second(quads, products) / 1e9 for label, quads in GROUP_QUADS.items()}
