"""The tiled kernels (4-byte dot products on 16-output tiles) against the numpy reference."""

import numpy as np
import pytest
from numba import njit
from test_kernels_gemm import extreme_operands, operands

from fgq_pipeline.kernels import ActivationFormat, pack_int8_layer, pack_ternary_layer
from fgq_pipeline.kernels.codes import unpack_codes
from fgq_pipeline.kernels.int8_gemm import int8_gemm
from fgq_pipeline.kernels.packed import as_int8_layer
from fgq_pipeline.kernels.reference import reference_int8_gemm, reference_ternary_gemm
from fgq_pipeline.kernels.simd import (
    FAST_LOWERINGS,
    add_scaled,
    affine,
    dot4_generic,
    dot4_lowering,
    dot4_madd256,
    dot4_madd512,
    dot4_vnni,
    float_zeros,
    int_add_scaled,
    int_zeros,
    load_bytes,
    store_floats,
    target_has,
)
from fgq_pipeline.kernels.ternary_gemm import BATCH_ROWS, ternary_gemm
from fgq_pipeline.kernels.tiled_gemm import GEMV_MAX_ROWS, ROW_BLOCK, TILE, TiledLayer

KERNEL_SIDE = {1: 1, 4: 2, 9: 3}  # kernel positions -> a square kernel's side


def ternary_layer(codes, scales, bias, act_scale, channels, group_size, positions, bits, signed, scale_dtype="fp32"):
    """The PackedLayer whose packed codes and scales are exactly ``codes`` and ``scales`` (reduction order)."""
    length = positions * channels
    weights, groups = unpack_codes(codes, length), scales.shape[1] // positions
    if positions > 1:
        side = KERNEL_SIDE[positions]
        weights = weights.reshape(-1, side, side, channels).transpose(0, 3, 1, 2)
        scales = scales.reshape(-1, side, side, groups).transpose(0, 3, 1, 2)
    geometry = ((1, 1), (1, 1)) if positions > 1 else (None, None)
    layer = pack_ternary_layer("layer", weights, scales, group_size, bias, ActivationFormat(act_scale, bits, signed),
                               *geometry, scale_dtype=scale_dtype)
    assert np.array_equal(layer.weights, codes)
    return layer


CASES = [  # (positions, channels, group size): N = 4, 8, 16, 64, 128, N = C, partial last groups, conv and linear
    (9, 16, 4), (1, 64, 4), (9, 32, 16), (9, 16, 16), (4, 12, 8), (1, 256, 64), (9, 64, 64), (1, 256, 128),
    (4, 40, 16),
]
ROWS = [1, GEMV_MAX_ROWS - 1, GEMV_MAX_ROWS, ROW_BLOCK + 5, 70]  # GEMV, both sides of its limit, partial row steps
FILTERS = [7, 2 * TILE, 70]  # a partial tile, whole tiles, a partial group of 4 tiles


@pytest.mark.parametrize("positions, channels, group_size", CASES)
@pytest.mark.parametrize("bits, signed", [(8, False), (8, True), (4, False), (4, True)])
def test_tiled_group_sums_are_exact(positions, channels, group_size, bits, signed):
    """Power-of-two scales keep every fp32 partial sum exact: any difference would be an integer error."""
    for rows in ROWS:
        for filters in FILTERS:
            x, *args = operands(rows * filters, rows, filters, positions, channels, group_size, bits, signed,
                                power_of_two_scales=True)
            tiled = TiledLayer.from_packed(ternary_layer(*args, positions, bits, signed))
            np.testing.assert_array_equal(tiled.gemm(x, args[3]), reference_ternary_gemm(x, *args).astype(np.float32),
                                          err_msg=f"rows={rows} filters={filters}")


@pytest.mark.parametrize("positions, channels, group_size", [(9, 16, 4), (1, 256, 64)])
def test_tiled_kernels_match_the_reference_to_float_rounding(positions, channels, group_size):
    x, *args = operands(8, 9, 70, positions, channels, group_size, 8, False, power_of_two_scales=False)
    tiled = TiledLayer.from_packed(ternary_layer(*args, positions, 8, False))
    expected = reference_ternary_gemm(x, *args)
    np.testing.assert_allclose(tiled.gemm(x, args[3]), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    # GEMV (2-bit codes) and batched (int8 weights) kernels: the same sums, added in the same order
    np.testing.assert_array_equal(tiled.gemm(x[:1], args[3])[0], tiled.gemm(x, args[3])[0])


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("positions, channels, group_size", [(9, 16, 4), (1, 256, 64)])
def test_gemv_reads_fp16_scales_as_stored_and_adds_what_the_other_kernels_add(positions, channels, group_size,
                                                                            signed):
    """fp16 widens exactly, so the GEMV (1 and 2 rows), the batched tiled kernel and the general
    kernels (row and batched paths) give the same floats."""
    x, codes, scales, bias, act_scale, channels, n = operands(10, GEMV_MAX_ROWS - 1, 70, positions, channels,
                                                              group_size, 8, signed, power_of_two_scales=False)
    layer = ternary_layer(codes, scales, bias, act_scale, channels, n, positions, 8, signed, "fp16")
    tiled = TiledLayer.from_packed(layer)
    gemv = tiled.gemm(x, act_scale)
    general = ternary_gemm(x, layer.weights, layer.fp32_scales, bias, act_scale, channels, n)
    batched = tiled.gemm(np.repeat(x, ROW_BLOCK, axis=0), act_scale)[::ROW_BLOCK]
    general_batched = ternary_gemm(np.repeat(x, BATCH_ROWS, axis=0), layer.weights, layer.fp32_scales, bias,
                                   act_scale, channels, n)[::BATCH_ROWS]
    assert x.shape[0] == 2 and tiled.gemv is not None
    np.testing.assert_array_equal(tiled.gemm(x[:1], act_scale), gemv[:1], err_msg="one row")
    for name, other in [("batched tiled", batched), ("general", general), ("general batched", general_batched)]:
        np.testing.assert_array_equal(gemv, other, err_msg=name)


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("positions, channels, group_size", [(9, 16, 4), (1, 256, 64), (9, 16, 16), (4, 12, 2)])
def test_int8_scales_compute_the_int8_weights_t_times_q_with_one_multiply_per_filter(positions, channels,
                                                                                    group_size, signed):
    """out = fl(fl(fl(float(sum_i t_i q_g(i) x_i) * sos_k) * s_x) + b_k): one exact int32 sum per filter.
    The GEMV (2-bit codes, int8 scales as stored), the batched tiled kernel (int8 weights t * q) and
    the general int8 GEMM give exactly that. Filter magnitudes span 10^-4..10^2, as folded BatchNorms
    make them, so each filter has its own scale-of-scales; N=2 has no GEMV but still runs tiled."""
    x, codes, scales, bias, act_scale, channels, n = operands(10, GEMV_MAX_ROWS - 1, 70, positions, channels,
                                                              group_size, 8, signed, power_of_two_scales=False)
    scales *= (10.0 ** np.random.default_rng(11).integers(-4, 3, (70, 1))).astype(np.float32)
    layer = ternary_layer(codes, scales, bias, act_scale, channels, n, positions, 8, signed, "int8")
    as_int8 = as_int8_layer(layer)
    per_position = layer.scales.astype(np.int64).reshape(70, positions, -1)
    q = np.repeat(per_position, n, axis=2)[:, :, :channels].reshape(70, -1)  # each group's scale on its weights
    weights = unpack_codes(codes, positions * channels).astype(np.int64) * q
    np.testing.assert_array_equal(as_int8.weights, weights)
    sums = (x.astype(np.int64) @ weights.T).astype(np.float32)
    expected = sums * layer.scale_of_scales * np.float32(act_scale) + bias
    tiled = TiledLayer.from_packed(layer)
    assert (tiled.gemv is not None) == (group_size % 4 == 0)
    kernels = {
        "tiled": tiled.gemm(x, act_scale),
        "one row": np.concatenate([tiled.gemm(x[:1], act_scale), tiled.gemm(x[1:], act_scale)]),
        "batched tiled": tiled.gemm(np.repeat(x, ROW_BLOCK, axis=0), act_scale)[::ROW_BLOCK],
        "general": int8_gemm(x, as_int8.weights, as_int8.fp32_scales[:, 0], bias, act_scale),
    }
    for name, out in kernels.items():
        np.testing.assert_array_equal(out, expected, err_msg=name)


def test_int_add_scaled_adds_each_group_sum_times_its_int8_scale_exactly():
    """acc + S * q per int32 lane, read from an offset, at the extremes: |S| = 2^23 times q = -127 and 127."""

    @njit
    def run(start_bytes, sum_bytes, scales, out):
        acc = int_add_scaled(load_bytes(start_bytes, 0), load_bytes(sum_bytes, 0), scales, 1)
        store_floats(out, 0, affine(add_scaled(float_zeros(), acc, np.ones(16, np.float32), 0), np.float32(1.0),
                                    np.zeros(16, np.float32), 0))

    rng = np.random.default_rng(5)
    sums = rng.integers(-2**23, 2**23, 16).astype(np.int32)
    sums[:3] = 2**23, -2**23, 2**23
    scales = rng.integers(-127, 128, 17).astype(np.int8)  # read from index 1
    scales[1:4] = -127, 127, 127
    start = rng.integers(-2**20, 2**20, 16).astype(np.int32)
    out = np.empty(16, np.float32)
    run(start.view(np.uint8), sums.view(np.uint8), scales, out)
    expected = start.astype(np.int64) + sums.astype(np.int64) * scales[1:].astype(np.int64)
    assert np.abs(expected).max() < 2**31
    np.testing.assert_array_equal(out, expected.astype(np.float32))


def test_tiled_kernels_are_exact_at_the_int8_and_uint8_extremes():
    for rows in (1, ROW_BLOCK):
        for x, codes, scales, bias, act_scale, channels, n in extreme_operands(rows, -127):
            signed = x.dtype == np.int8
            tiled = TiledLayer.from_packed(ternary_layer(codes, scales, bias, act_scale, channels, n, 1, 8, signed))
            expected = reference_ternary_gemm(x, codes, scales, bias, act_scale, channels, n).astype(np.float32)
            np.testing.assert_array_equal(tiled.gemm(x, act_scale), expected)


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("rows", [1, 5, 64])
def test_tiled_int8_layers_match_the_reference(signed, rows):
    """int8 weights (the first/last layers) at their extremes too: one group over the whole filter."""
    rng = np.random.default_rng(rows)
    weights = rng.integers(-127, 128, (10, 36)).astype(np.int8)
    weights[0], weights[1] = 127, -127
    scales = np.ldexp(1.0, rng.integers(-8, -3, 10)).astype(np.float32)
    top = 127 if signed else 255
    x = rng.integers(-top if signed else 0, top + 1, (rows, 36)).astype(np.int8 if signed else np.uint8)
    x[0] = top
    bias = np.zeros(10, np.float32)
    tiled = TiledLayer.from_packed(pack_int8_layer("fc", weights, scales, bias, ActivationFormat(1.0, 8, signed)))
    np.testing.assert_array_equal(tiled.gemm(x, 1.0), reference_int8_gemm(x, weights, scales, bias, 1.0)
                                  .astype(np.float32))


@pytest.mark.parametrize("channels, group_size", [(3, 3), (10, 4), (64, 6), (64, 2)])
def test_layers_without_whole_quads_are_refused(channels, group_size):
    layer = pack_ternary_layer("odd", np.ones((4, channels), np.int8), np.ones((4, -(-channels // group_size)),
                               np.float32), group_size, np.zeros(4, np.float32), ActivationFormat(1.0, 8, False))
    assert not TiledLayer.supports(layer)
    with pytest.raises(ValueError, match=f"in_channels={channels}, group_size={group_size}"):
        TiledLayer.from_packed(layer)


def test_tiled_layer_refuses_activations_of_another_length():
    layer = pack_ternary_layer("fc", np.ones((4, 8), np.int8), np.ones((4, 2), np.float32), 4,
                               np.zeros(4, np.float32), ActivationFormat(1.0, 8, False))
    with pytest.raises(ValueError, match="12 columns, the layer takes 8"):
        TiledLayer.from_packed(layer).gemm(np.zeros((1, 12), np.uint8), 1.0)


def _dot4_as_floats(dot4):
    @njit
    def run(unsigned_bytes, signed_bytes, ones, zeros, out):
        sums = dot4(int_zeros(), load_bytes(unsigned_bytes, 0), load_bytes(signed_bytes, 0))
        store_floats(out, 0, affine(add_scaled(float_zeros(), sums, ones, 0), np.float32(1.0), zeros, 0))
    return run


DOT4_LOWERINGS = dict(FAST_LOWERINGS) | {None: dot4_generic}


@pytest.mark.parametrize("feature", DOT4_LOWERINGS)
def test_dot4_lowerings_compute_exact_sums_of_four_products(feature):
    dot4 = DOT4_LOWERINGS[feature]
    if feature is not None and not target_has(feature):
        pytest.skip(f"Numba's target CPU has no {feature}")
    rng = np.random.default_rng(9)
    unsigned_bytes = rng.integers(0, 256, 64).astype(np.uint8)
    signed_bytes = rng.integers(-128, 128, 64).astype(np.int8)
    unsigned_bytes[:8], signed_bytes[:4], signed_bytes[4:8] = 255, -128, 127  # the extreme lanes 0 and 1
    out = np.empty(16, np.float32)
    run = _dot4_as_floats(dot4)
    run(unsigned_bytes, signed_bytes, np.ones(16, np.float32), np.zeros(16, np.float32), out)
    expected = (unsigned_bytes.astype(np.int64) * signed_bytes).reshape(16, 4).sum(axis=1)
    assert expected[0] == 4 * 255 * -128
    np.testing.assert_array_equal(out, expected.astype(np.float32))


@pytest.mark.parametrize("cpu_name, features, expected", [
    ("generic", None, False), ("x86-64", "+avx512f,+avx512vnni", True), (None, "+avx2", False),
])
def test_a_pinned_numba_target_decides_whether_vpdpbusd_is_used(monkeypatch, cpu_name, features, expected):
    """A portable cache (NUMBA_CPU_NAME=generic) must not get an instruction its CPUs may lack."""
    from numba.core import config

    monkeypatch.setattr(config, "CPU_NAME", cpu_name)
    monkeypatch.setattr(config, "CPU_FEATURES", features)
    assert target_has("avx512vnni") is expected


@pytest.mark.parametrize("features, expected", [
    (None, (dot4_generic, False)), ("+avx2", (dot4_madd256, True)), ("+avx2,+avx512f,+avx512bw", (dot4_madd512, True)),
    ("+avx2,+avx512f,+avx512bw,+avx512vnni", (dot4_vnni, True)),
])
def test_dot4_takes_the_best_instruction_of_the_target_and_only_a_fast_one_opens_the_tiled_kernels(
        monkeypatch, features, expected):
    """Without AVX2 the plain-IR dot4 is slower than the general kernels; with it, vpmaddwd is not."""
    from numba.core import config

    monkeypatch.setattr(config, "CPU_NAME", "generic")
    monkeypatch.setattr(config, "CPU_FEATURES", features)
    assert dot4_lowering() == expected
