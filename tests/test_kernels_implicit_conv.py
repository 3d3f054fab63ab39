"""Convolutions read in place (implicit GEMM), the fused add/ReLU epilogue and quad-padded stems:
each bit for bit what the im2col path and the unfused graph compute."""

import numpy as np
import pytest

from fgq_pipeline.kernels import ActivationFormat, pack_int8_layer, pack_ternary_layer
from fgq_pipeline.kernels.fusion import fuse_epilogues
from fgq_pipeline.kernels.graph_ops import add, relu
from fgq_pipeline.kernels.im2col import im2col
from fgq_pipeline.kernels.int8_gemm import int8_gemm
from fgq_pipeline.kernels.packed import with_quad_channels
from fgq_pipeline.kernels.simd import FAST_DOT4
from fgq_pipeline.kernels.tiled_gemm import TiledLayer

needs_fast_dot4 = pytest.mark.skipif(
    not FAST_DOT4, reason="the tiled kernels run only on CPUs with AVX2, AVX-512BW or AVX-512 VNNI")

GEOMETRIES = [  # (kernel, stride, padding, dilation, height, width)
    ((3, 3), (1, 1), (1, 1), (1, 1), 9, 7), ((3, 3), (2, 2), (1, 1), (1, 1), 8, 8), ((1, 1), (2, 2), (0, 0), (1, 1), 6, 5),
    ((3, 3), (1, 1), (2, 2), (2, 2), 7, 7), ((2, 3), (1, 2), (0, 1), (1, 1), 5, 6),
]


def ternary_conv(rng, filters, channels, kernel, group_size, stride, padding, dilation, bits, signed,
                 scale_dtype="fp32"):
    codes = rng.integers(-1, 2, (filters, channels, *kernel)).astype(np.int8)
    groups = -(-channels // group_size)
    scales = rng.uniform(0.01, 0.1, (filters, groups, *kernel)).astype(np.float32)
    bias = rng.normal(size=filters).astype(np.float32)
    return pack_ternary_layer("conv", codes, scales, min(group_size, channels), bias,
                              ActivationFormat(0.05, bits, signed), stride, padding, scale_dtype, dilation)


def through_im2col(layer, tiled, x):
    columns, (out_h, out_w) = im2col(layer.activation.quantize(x), layer.kernel_size, layer.stride, layer.padding,
                                     layer.dilation)
    return tiled.gemm(columns, layer.activation.scale).reshape(x.shape[0], out_h, out_w, layer.out_channels)


@needs_fast_dot4
@pytest.mark.parametrize("kernel, stride, padding, dilation, height, width", GEOMETRIES)
@pytest.mark.parametrize("group_size, scale_dtype", [(4, "fp32"), (8, "fp16"), (64, "fp32"), (4, "int8")])
@pytest.mark.parametrize("bits, signed", [(8, False), (8, True), (4, False)])
def test_conv_read_in_place_equals_the_im2col_gemm(kernel, stride, padding, dilation, height, width, group_size,
                                                   scale_dtype, bits, signed):
    rng = np.random.default_rng(len(kernel) * height + group_size + bits)
    layer = ternary_conv(rng, 24, 16, kernel, group_size, stride, padding, dilation, bits, signed, scale_dtype)
    tiled = TiledLayer.from_packed(layer)
    for batch in (1, 3):  # batch 3 x the output pixels: partial row blocks and chunks
        x = rng.normal(scale=0.3, size=(batch, height, width, 16)).astype(np.float32)
        padded = layer.activation.quantize(x, layer.padding)
        in_place = tiled.conv(padded, layer.kernel_size, layer.stride, layer.dilation, layer.activation.scale)
        np.testing.assert_array_equal(in_place, through_im2col(layer, tiled, x))


@needs_fast_dot4
@pytest.mark.parametrize("filters", [16, 24])  # whole tiles, and a partial tile (padded residual columns)
def test_fused_add_and_relu_equal_the_graph_ops_after_the_layer(filters):
    rng = np.random.default_rng(filters)
    layer = ternary_conv(rng, filters, 8, (3, 3), 4, (1, 1), (1, 1), (1, 1), 8, False)
    tiled = TiledLayer.from_packed(layer)
    x = rng.normal(size=(2, 6, 6, 8)).astype(np.float32)
    residual = rng.normal(size=(2, 6, 6, filters)).astype(np.float32)
    padded = layer.activation.quantize(x, layer.padding)
    geometry = (layer.kernel_size, layer.stride, layer.dilation, layer.activation.scale)
    plain = tiled.conv(padded, *geometry)
    np.testing.assert_array_equal(tiled.conv(padded, *geometry, residual, True), relu(add(plain, residual)))
    np.testing.assert_array_equal(tiled.conv(padded, *geometry, residual, False), add(plain, residual))
    np.testing.assert_array_equal(tiled.conv(padded, *geometry, None, True), relu(plain))
    with pytest.raises(ValueError, match="residual must be fp32"):
        tiled.conv(padded, *geometry, residual[:1], True)


def test_quantize_pads_rows_columns_and_channels_with_integer_zero():
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 3)).astype(np.float32)
    activation = ActivationFormat(0.1, 8, True)
    padded = activation.quantize(x, (1, 2), channels=4)
    assert padded.shape == (2, 5, 8, 4)
    np.testing.assert_array_equal(padded[:, 1:4, 2:6, :3], activation.quantize(x))
    assert not padded[:, [0, 4]].any() and not padded[:, :, [0, 1, 6, 7]].any() and not padded[..., 3].any()
    with pytest.raises(ValueError, match="cannot pad 3 channels to 2"):
        activation.quantize(x, channels=2)


@needs_fast_dot4
def test_rgb_stem_padded_to_four_channels_computes_the_same_outputs():
    rng = np.random.default_rng(3)
    weights = rng.integers(-127, 128, (16, 3, 3, 3)).astype(np.int8)
    layer = pack_int8_layer("stem", weights, rng.uniform(0.001, 0.01, 16), rng.normal(size=16),
                            ActivationFormat(0.02, 8, True), (1, 1), (1, 1))
    wide = with_quad_channels(layer)
    assert wide.in_channels == 4 and wide.weight_count == 16 * 36 and with_quad_channels(wide) is wide
    x = rng.normal(size=(2, 5, 5, 3)).astype(np.float32)
    tiled = TiledLayer.from_packed(wide)
    in_place = tiled.conv(layer.activation.quantize(x, layer.padding, channels=4), layer.kernel_size, layer.stride,
                          layer.dilation, layer.activation.scale)
    columns, _ = im2col(layer.activation.quantize(x), layer.kernel_size, layer.stride, layer.padding)
    expected = int8_gemm(columns, layer.weights, layer.fp32_scales[:, 0], layer.bias, layer.activation.scale)
    np.testing.assert_array_equal(in_place.reshape(-1, 16), expected)


def node(op, inputs, output, **fields):
    return {"op": op, "inputs": inputs, "output": output, **fields}


def test_fusion_folds_conv_add_relu_chains_and_leaves_shared_values_alone():
    graph = [
        node("input", [], "x"),
        node("conv", ["x"], "c1", layer="conv1"), node("relu", ["c1"], "r1"),                     # conv -> relu
        node("conv", ["r1"], "c2", layer="conv2"),
        node("conv", ["r1"], "short", layer="shortcut"),                                           # defined after c2
        node("add", ["c2", "short"], "sum"), node("relu", ["sum"], "r2"),                          # conv -> add -> relu
        node("conv", ["r2"], "c3", layer="conv3"), node("relu", ["c3"], "r3"),
        node("add", ["c3", "r3"], "both"),                                                         # c3 read twice
        node("flatten", ["both"], "f"), node("linear", ["f"], "logits", layer="fc"),
    ]
    plan = fuse_epilogues(graph)
    ops = [(n["op"], n.get("layer"), n["inputs"], n["output"], n.get("residual"), n.get("relu")) for n in plan]
    assert ops == [
        ("input", None, [], "x", None, None),
        ("conv", "conv1", ["x"], "r1", False, True),
        ("conv", "shortcut", ["r1"], "short", None, None),
        ("conv", "conv2", ["r1", "short"], "r2", True, True),  # runs where the add was: "short" is defined
        ("conv", "conv3", ["r2"], "c3", None, None),
        ("relu", None, ["c3"], "r3", None, None),
        ("add", None, ["c3", "r3"], "both", None, None),
        ("flatten", None, ["both"], "f", None, None),
        ("linear", "fc", ["f"], "logits", None, None),
    ]


@needs_fast_dot4
@pytest.mark.parametrize("bits, padding", [(8, (1, 1)), (4, (0, 0))])
def test_requantized_outputs_are_what_the_next_layer_would_round_them_to(bits, padding):
    rng = np.random.default_rng(bits)
    layer = ternary_conv(rng, 32, 8, (3, 3), 4, (1, 1), (1, 1), (1, 1), 8, False)
    tiled = TiledLayer.from_packed(layer)
    x = rng.normal(size=(2, 5, 6, 8)).astype(np.float32)
    residual = rng.normal(size=(2, 5, 6, 32)).astype(np.float32)
    arguments = (layer.activation.quantize(x, layer.padding), layer.kernel_size, layer.stride, layer.dilation,
                 layer.activation.scale, residual, True)
    next_input = ActivationFormat(0.013, bits, False)  # small steps: many outputs saturate at the top
    floats, integers = tiled.conv_requantized(*arguments, next_input, padding, True)
    np.testing.assert_array_equal(floats, tiled.conv(*arguments))
    np.testing.assert_array_equal(integers, next_input.quantize(floats, padding))
    assert (integers == 2**bits - 1).any() and (integers == 0).any()
    without_floats, same = tiled.conv_requantized(*arguments, next_input, padding, False)
    assert without_floats is None and np.array_equal(same, integers)
    with pytest.raises(ValueError, match="unsigned next input"):
        tiled.conv_requantized(*arguments, ActivationFormat(0.1, 8, True), padding, True)
