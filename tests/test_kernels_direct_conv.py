"""The direct 3x3 kernels: the batched kernel's outputs bit for bit (float, requantized, with the fused
add and ReLU), for every strip layout a row width gives, and only for the layers they were built for."""

import numpy as np
import pytest

from fgq_pipeline.kernels import ActivationFormat
from fgq_pipeline.kernels.direct_conv import (
    FILTER_STRIP,
    PER_FILTER,
    PER_POSITION,
    POSITION_STRIP,
    direct_kind,
    direct_plan,
)
from fgq_pipeline.kernels.tiled_gemm import TiledLayer, batched_kernel, conv_addressing, padded_pixel_starts

from test_kernels_implicit_conv import needs_fast_dot4, ternary_conv, through_im2col

SAME_3X3 = ((3, 3), (1, 1), (1, 1), (1, 1))  # kernel, stride, padding, dilation


@needs_fast_dot4
@pytest.mark.parametrize("width", [5, 6, 7, 13, 16, 17])  # narrower than a strip, one strip, a shifted last strip
@pytest.mark.parametrize("channels, group_size, scale_dtype, kind", [
    (16, 64, "fp32", PER_POSITION), (32, 32, "fp16", PER_POSITION), (16, 4, "int8", PER_FILTER),
    (4, 64, "int8", PER_FILTER),
])
@pytest.mark.parametrize("bits, signed", [(8, False), (8, True), (4, False)])
def test_direct_kernels_compute_the_im2col_gemm_bit_for_bit(width, channels, group_size, scale_dtype, kind, bits,
                                                           signed):
    rng = np.random.default_rng(width + channels + bits)
    layer = ternary_conv(rng, 16, channels, (3, 3), group_size, (1, 1), (1, 1), (1, 1), bits, signed, scale_dtype)
    tiled = TiledLayer.from_packed(layer)
    x = rng.normal(scale=0.3, size=(2, 3, width, channels)).astype(np.float32)
    padded = layer.activation.quantize(x, layer.padding)
    plan = direct_plan(tiled.weights, tiled.group_ends, padded.shape, *SAME_3X3[:2], SAME_3X3[3])
    if width < (POSITION_STRIP if kind == PER_POSITION else FILTER_STRIP):
        assert plan is None  # narrower than a strip: the batched kernel
    else:
        assert plan is not None and plan[0] == kind
    in_place = tiled.conv(padded, layer.kernel_size, layer.stride, layer.dilation, layer.activation.scale)
    np.testing.assert_array_equal(in_place, through_im2col(layer, tiled, x))


@needs_fast_dot4
@pytest.mark.parametrize("channels, group_size, scale_dtype", [(16, 64, "fp32"), (16, 8, "int8")])
def test_direct_epilogue_stores_what_the_batched_kernel_stores(channels, group_size, scale_dtype):
    """Residual, ReLU, float and requantized outputs, with the rows of shifted strips written twice."""
    rng = np.random.default_rng(channels)
    layer = ternary_conv(rng, 16, channels, (3, 3), group_size, (1, 1), (1, 1), (1, 1), 8, False, scale_dtype)
    tiled = TiledLayer.from_packed(layer)
    padded = layer.activation.quantize(rng.normal(size=(3, 4, 19, channels)).astype(np.float32), layer.padding)
    assert direct_plan(tiled.weights, tiled.group_ends, padded.shape, *SAME_3X3[:2], SAME_3X3[3]) is not None
    (out_h, out_w), row_starts, quad_offsets = conv_addressing(padded.shape, (3, 3), (1, 1), (1, 1))
    residual = rng.normal(size=(3, out_h, out_w, 16)).astype(np.float32)
    next_input = ActivationFormat(0.02, 8, False)
    floats, integers = tiled.conv_requantized(padded, (3, 3), (1, 1), (1, 1), layer.activation.scale, residual, True,
                                              next_input, (1, 1), True)
    expected = np.empty((row_starts.shape[0], 16), np.float32)
    expected_integers = np.zeros_like(integers)
    batched_kernel(padded.ravel(), row_starts, quad_offsets, tiled.weights, tiled.scales, tiled.offsets,
                   tiled.group_ends, False, tiled.bias, np.float32(layer.activation.scale), residual.ravel(), True,
                   True, expected_integers.ravel(), padded_pixel_starts(integers.shape, 1, 1),
                   np.float32(next_input.scale), np.float32(255), expected)
    np.testing.assert_array_equal(floats, expected.reshape(floats.shape))
    np.testing.assert_array_equal(integers, expected_integers)


def test_direct_kernels_take_only_single_tile_layers_with_their_groups_and_geometry():
    per_position = np.arange(1, 10) * 4  # 16 channels, a group per kernel position
    assert direct_kind(per_position, 36) == PER_POSITION
    assert direct_kind(np.array([36]), 36) == PER_FILTER
    assert direct_kind(np.arange(1, 19) * 2, 36) == 0  # two groups per position (N=8 of 16 channels)
    assert direct_kind(np.arange(1, 10) * 2, 18) == 0  # a group per position of 8 channels: batched is faster
    shape, one_tile, two_tiles = (1, 18, 18, 16), np.zeros((1, 36, 64), np.int8), np.zeros((2, 36, 64), np.int8)
    assert direct_plan(one_tile, per_position, shape, (3, 3), (1, 1), (1, 1))[0] == PER_POSITION
    assert direct_plan(one_tile, np.array([36]), shape, (3, 3), (1, 1), (1, 1))[0] == PER_FILTER
    assert direct_plan(two_tiles, per_position, shape, (3, 3), (1, 1), (1, 1)) is None
    for kernel, stride, dilation in [((3, 3), (2, 2), (1, 1)), ((3, 3), (1, 1), (2, 2)), ((1, 1), (1, 1), (1, 1))]:
        assert direct_plan(one_tile, np.array([36]), shape, kernel, stride, dilation) is None
