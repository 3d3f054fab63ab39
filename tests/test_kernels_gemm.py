"""Numba ternary and int8 GEMM against the numpy reference, and im2col against torch's unfold."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from fgq_pipeline.kernels.codes import pack_codes
from fgq_pipeline.kernels.im2col import im2col
from fgq_pipeline.kernels.int8_gemm import int8_gemm
from fgq_pipeline.kernels.reference import (
    reference_group_sums,
    reference_int8_gemm,
    reference_ternary_gemm,
)
from fgq_pipeline.kernels.ternary_gemm import (
    BATCH_ROWS,
    TILE_OUTPUTS,
    _ternary_gemm_batched_kernel,
    _ternary_gemm_kernel,
    ternary_gemm,
    ternary_gemv,
)


def activations(rng, shape, bits: int, signed: bool) -> np.ndarray:
    if signed:
        top = 2 ** (bits - 1) - 1
        return rng.integers(-top, top + 1, shape).astype(np.int8)
    return rng.integers(0, 2**bits, shape).astype(np.uint8)


def operands(seed: int, rows: int, filters: int, positions: int, channels: int, group_size: int, bits: int,
             signed: bool, power_of_two_scales: bool):
    rng = np.random.default_rng(seed)
    n = min(group_size, channels)  # N > C means one group per channel vector
    groups = positions * -(-channels // n)
    x = activations(rng, (rows, positions * channels), bits, signed)
    codes = pack_codes(rng.integers(-1, 2, (filters, positions * channels)).astype(np.int8))
    if power_of_two_scales:  # sums stay multiples of 1/8 below 2^21, exact in fp32: outputs must match exactly
        scales = np.ldexp(1.0, rng.integers(-3, 4, (filters, groups))).astype(np.float32)
        bias, act_scale = np.zeros(filters, np.float32), 1.0
    else:
        scales = rng.normal(size=(filters, groups)).astype(np.float32)
        bias, act_scale = rng.normal(size=filters).astype(np.float32), 0.037
    return x, codes, scales, bias, act_scale, channels, n


CASES = [  # (positions, channels, group size): N in {1, 3, 4, 16, 64 > C}, C not a multiple of N
    (9, 16, 1), (9, 16, 3), (9, 16, 4), (1, 64, 4), (9, 32, 16), (9, 16, 64), (4, 10, 4), (9, 3, 4), (1, 50, 16),
]


@pytest.mark.parametrize("positions, channels, group_size", CASES)
@pytest.mark.parametrize("bits, signed", [(8, False), (8, True), (4, False), (4, True)])
def test_group_sums_are_exact(positions, channels, group_size, bits, signed):
    args = operands(0, 5, 7, positions, channels, group_size, bits, signed, power_of_two_scales=True)
    out = ternary_gemm(*args)
    np.testing.assert_array_equal(out, reference_ternary_gemm(*args).astype(np.float32))


@pytest.mark.parametrize("positions, channels, group_size", CASES)
@pytest.mark.parametrize("bits, signed", [(8, False), (8, True), (4, False)])
def test_gemm_and_gemv_match_the_reference_to_float_rounding(positions, channels, group_size, bits, signed):
    x, *rest = operands(1, 6, 11, positions, channels, group_size, bits, signed, power_of_two_scales=False)
    expected = reference_ternary_gemm(x, *rest)
    np.testing.assert_allclose(ternary_gemm(x, *rest), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    np.testing.assert_allclose(ternary_gemv(x[2], *rest), expected[2], rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), rows=st.integers(1, 4), filters=st.integers(1, 9),
       positions=st.sampled_from([1, 4, 9]), channels=st.integers(1, 40), group_size=st.integers(1, 70),
       bits=st.sampled_from([4, 8]), signed=st.booleans())
def test_any_shape_sums_exactly(seed, rows, filters, positions, channels, group_size, bits, signed):
    args = operands(seed, rows, filters, positions, channels, group_size, bits, signed, power_of_two_scales=True)
    np.testing.assert_array_equal(ternary_gemm(*args), reference_ternary_gemm(*args).astype(np.float32))


# Batched path: M >= BATCH_ROWS; M = 70 and 130 leave a remainder for the row path, K = 7 and 9 leave
# a partial output tile. N in {1, 3, 4, 16, 64, C}, C divisible by N or not, conv-like L = positions * C.
BATCHED_CASES = [
    (9, 16, 1), (9, 16, 3), (9, 10, 4), (9, 16, 4), (4, 50, 16), (1, 128, 64), (9, 16, 64), (2, 200, 200),
]


@pytest.mark.parametrize("positions, channels, group_size", BATCHED_CASES)
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("rows, filters", [(BATCH_ROWS - 1, 7), (BATCH_ROWS, 9), (70, 7), (2 * BATCH_ROWS + 2, 5)])
def test_batched_path_matches_the_reference(positions, channels, group_size, signed, rows, filters):
    assert filters % TILE_OUTPUTS
    x, *rest = operands(3, rows, filters, positions, channels, group_size, 8, signed, power_of_two_scales=False)
    expected = reference_ternary_gemm(x, *rest)
    np.testing.assert_allclose(ternary_gemm(x, *rest), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    exact = operands(4, rows, filters, positions, channels, group_size, 8, signed, power_of_two_scales=True)
    np.testing.assert_array_equal(ternary_gemm(*exact), reference_ternary_gemm(*exact).astype(np.float32))


@pytest.mark.parametrize("positions, channels, group_size", BATCHED_CASES)
@pytest.mark.parametrize("signed", [False, True])
def test_batched_and_row_paths_are_bit_identical_on_exact_sums(positions, channels, group_size, signed):
    """Power-of-two scales keep every fp32 partial sum exact, so any difference is an integer error."""
    x, codes, scales, bias, act_scale, channels, n = operands(
        5, 2 * BATCH_ROWS, 6, positions, channels, group_size, 8, signed, power_of_two_scales=True)
    args = (codes, scales, bias, np.float32(act_scale), channels, n)
    batched, rows = np.empty((2, x.shape[0], codes.shape[0]), dtype=np.float32)
    _ternary_gemm_batched_kernel(x, *args, batched)
    _ternary_gemm_kernel(x, *args, rows)
    np.testing.assert_array_equal(batched, rows)


def extreme_operands(rows: int, most_negative: int):
    """N=128 over 256 channels, every code +1, every code -1, or alternating, and every activation
    at 255 (uint8) or ``most_negative`` (int8): the largest group sums, |s| = 128 * 255 = 32,640."""
    codes = pack_codes(np.array([[1] * 256, [-1] * 256, [1, -1] * 128], dtype=np.int8))
    scales, bias = np.ones((3, 2), np.float32), np.zeros(3, np.float32)
    for x in (np.full((rows, 256), 255, np.uint8), np.full((rows, 256), most_negative, np.int8)):
        yield x, codes, scales, bias, 1.0, 256, 128


def test_batched_path_is_exact_at_the_int8_and_uint8_extremes():
    for args in extreme_operands(BATCH_ROWS, -127):
        np.testing.assert_array_equal(ternary_gemm(*args), reference_ternary_gemm(*args).astype(np.float32))


def test_reference_group_sums_count_codes_times_activations():
    x = np.array([[1, 2, 3, 4, 5]], dtype=np.uint8)
    codes = pack_codes(np.array([[1, -1, 0, 1, -1]], dtype=np.int8))
    np.testing.assert_array_equal(reference_group_sums(x, codes, channels=5, group_size=2), [[[1 - 2, 0 + 4, -5]]])


@pytest.mark.parametrize("signed", [False, True])
def test_int8_gemm_matches_the_reference(signed):
    rng = np.random.default_rng(2)
    x = activations(rng, (5, 27), 8, signed)
    weights = rng.integers(-127, 128, (16, 27)).astype(np.int8)
    scales, bias = rng.random(16).astype(np.float32), rng.normal(size=16).astype(np.float32)
    expected = reference_int8_gemm(x, weights, scales, bias, 0.02)
    np.testing.assert_allclose(int8_gemm(x, weights, scales, bias, 0.02), expected, rtol=1e-5, atol=1e-5)


def test_kernels_reject_operands_of_the_wrong_shape_or_dtype():
    x, codes, scales, bias, act_scale, channels, n = operands(0, 2, 3, 9, 16, 4, 8, False, False)
    with pytest.raises(ValueError, match="scales must be"):
        ternary_gemm(x, codes, scales[:, :-1], bias, act_scale, channels, n)
    with pytest.raises(ValueError, match="activations must be"):
        ternary_gemm(x.astype(np.int32), codes, scales, bias, act_scale, channels, n)
    with pytest.raises(ValueError, match="channels dividing"):
        ternary_gemm(x, codes, scales, bias, act_scale, 10, n)


@pytest.mark.parametrize("stride, padding", [((1, 1), (1, 1)), ((2, 2), (1, 1)), ((1, 2), (0, 1))])
def test_im2col_columns_are_unfold_in_r_s_c_order(stride, padding):
    x = torch.randint(0, 255, (2, 5, 7, 6), dtype=torch.uint8)  # NCHW
    expected = F.unfold(x.double(), (3, 3), padding=padding, stride=stride)  # [B, C*R*S, OH*OW], (c, r, s)
    expected = expected.reshape(2, 5, 9, -1).permute(0, 3, 2, 1).reshape(-1, 45)  # -> [B*OH*OW, (r, s, c)]
    columns, _ = im2col(x.permute(0, 2, 3, 1).numpy(), (3, 3), stride, padding)
    np.testing.assert_array_equal(columns, expected.numpy())
