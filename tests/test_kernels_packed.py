"""The packed 2-bit format: exact round trips, scale precision, and a loader that rejects bad files."""

import dataclasses
import json
import struct
import subprocess
import sys

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from fgq_pipeline.kernels import (
    ActivationFormat,
    IntegerNet,
    bits_per_weight,
    load_packed,
    pack_ternary_layer,
    save_packed,
)
from fgq_pipeline.kernels.codes import pack_codes, unpack_codes
from fgq_pipeline.kernels.packed import pack_int8_layer, to_reduction_order
from fgq_pipeline.kernels.scales import encode_scales

ACTIVATION = ActivationFormat(scale=0.05, bits=8, signed=False)


def ternary_layer(scale_dtype: str = "fp32", seed: int = 0, shape=(8, 6, 3, 3), group_size: int = 4,
                  spread: bool = False):
    rng = np.random.default_rng(seed)
    codes = rng.integers(-1, 2, shape).astype(np.int8)
    groups = -(-shape[1] // group_size)
    scales = rng.uniform(0.01, 2.0, (shape[0], groups, *shape[2:])).astype(np.float32)
    scales[0] *= -1  # a BatchNorm with negative gamma folds into negative scales
    if spread:  # filter k's scales times 10^(k - 4), as folded BatchNorms spread them
        scales *= (10.0 ** (np.arange(shape[0]) - 4)).astype(np.float32).reshape(-1, *[1] * (scales.ndim - 1))
    bias = rng.normal(size=shape[0]).astype(np.float32)
    conv = len(shape) == 4
    layer = pack_ternary_layer("features.3", codes, scales, group_size, bias, ACTIVATION,
                               stride=(1, 1) if conv else None, padding=(1, 1) if conv else None,
                               scale_dtype=scale_dtype)
    return layer, codes, scales


def int8_layer():
    rng = np.random.default_rng(1)
    weights = rng.integers(-127, 128, (10, 64)).astype(np.int8)
    return pack_int8_layer("classifier", weights, rng.random(10).astype(np.float32), np.zeros(10, np.float32),
                           ActivationFormat(scale=0.1, bits=4, signed=False))


def write(tmp_path, layers, name="model.safetensors"):
    graph = [{"op": "input", "inputs": [], "output": "x"}] + [
        {"op": layer.kind, "layer": layer.name, "inputs": ["x"], "output": layer.name} for layer in layers]
    return save_packed(tmp_path / name, layers, graph=graph)


def test_codes_pack_four_to_a_byte_in_reduction_order():
    packed = pack_codes(np.array([[1, -1, 0, 1, -1]], dtype=np.int8))
    assert packed.tolist() == [[0b01_00_11_01, 0b00_00_00_11]]
    codes = np.random.default_rng(0).integers(-1, 2, (5, 37)).astype(np.int8)
    np.testing.assert_array_equal(unpack_codes(pack_codes(codes), 37), codes)


def test_round_trip_keeps_codes_scales_and_metadata_exactly(tmp_path):
    layer, codes, scales = ternary_layer()
    loaded = load_packed(write(tmp_path, [layer, int8_layer()]))
    again = loaded.layers["features.3"]
    np.testing.assert_array_equal(unpack_codes(again.weights, again.reduction_length), to_reduction_order(codes))
    np.testing.assert_array_equal(again.fp32_scales, to_reduction_order(scales))
    np.testing.assert_array_equal(again.bias, layer.bias)
    assert (again.weight_shape, again.stride, again.padding, again.dilation, again.group_size, again.activation) == (
        (8, 6, 3, 3), (1, 1), (1, 1), (1, 1), 4, ACTIVATION)
    np.testing.assert_array_equal(loaded.layers["classifier"].weights, int8_layer().weights)
    assert list(loaded.layers) == ["features.3", "classifier"]


def test_the_same_layers_always_give_the_same_bytes(tmp_path):
    layers = [ternary_layer()[0], int8_layer()]
    first = save_packed(tmp_path / "first.fgq", layers).read_bytes()
    assert all(save_packed(tmp_path / f"{i}.fgq", layers).read_bytes() == first for i in range(8))
    assert load_packed(tmp_path / "first.fgq").layers["classifier"].weights.tobytes() == int8_layer().weights.tobytes()


def test_int8_scales_keep_their_scale_of_scales_as_an_fp32_array_per_filter(tmp_path):
    layer = ternary_layer("int8", spread=True)[0]
    path = write(tmp_path, [layer])
    with safe_open(path, framework="np") as handle:
        stored = handle.get_tensor("features.3.scale_of_scales")
        assert "scale_of_scales" not in json.loads(handle.metadata()["layers"])[0]
    assert stored.dtype == np.float32 and stored.shape == (8,)
    again = load_packed(path).layers["features.3"]
    np.testing.assert_array_equal(again.scale_of_scales, layer.scale_of_scales)
    np.testing.assert_array_equal(again.scales, layer.scales)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.pop("features.3.scale_of_scales"), "int8 scales need a scale-of-scales per output filter"),
    (lambda t: t["features.3.scale_of_scales"].__setitem__(1, -2.0), "the scale-of-scales of filter 1 is -2.0"),
])
def test_loader_rejects_int8_scales_without_a_valid_scale_of_scales(tmp_path, edit, message):
    path = write(tmp_path, [ternary_layer("int8")[0]])
    rewrite(path, edit_tensors=edit)  # the layer checks run before the digest's
    with pytest.raises(ValueError, match=f"model.safetensors: layer 'features.3': {message}"):
        load_packed(path)


def test_loader_rejects_a_scale_of_scales_beside_fp32_scales(tmp_path):
    path = write(tmp_path, [ternary_layer()[0]])
    rewrite(path, edit_tensors=lambda t: t.update({"features.3.scale_of_scales": np.ones(8, np.float32)}))
    with pytest.raises(ValueError, match=r"features.3': only int8 scales take a scale-of-scales, got one with fp32"):
        load_packed(path)


@pytest.mark.parametrize("scale_dtype, bound", [
    ("fp16", lambda s: 2.0**-11 * np.abs(s) + 2.0**-25),  # half an fp16 ulp (normal or subnormal)
    ("int8", lambda s: np.abs(s).max(axis=1, keepdims=True) / 127 / 2 * (1 + 1e-6)),  # half a step of the row's
])  # largest |s| / 127
def test_reduced_precision_scales_stay_within_half_a_step(tmp_path, scale_dtype, bound):
    layer, _, scales = ternary_layer(scale_dtype, spread=True)
    exact = to_reduction_order(scales)
    decoded = load_packed(write(tmp_path, [layer])).layers["features.3"].fp32_scales
    assert (np.abs(decoded - exact) <= bound(exact)).all()


def test_bits_per_weight_counts_codes_and_scales():
    linear, _, _ = ternary_layer(shape=(16, 64), group_size=4)  # 2 bits + one scale per 4 weights
    assert bits_per_weight(linear) == pytest.approx(2 + 32 / 4)
    assert bits_per_weight(ternary_layer("fp16", shape=(16, 64))[0]) == pytest.approx(2 + 16 / 4)
    int8_scaled = ternary_layer("int8", shape=(16, 64))[0]  # codes, 8-bit scales, one fp32 per output filter
    assert bits_per_weight(int8_scaled) == (16 * 16 * 8 + 16 * 16 * 8 + 16 * 32) / (16 * 64) == 2 + 8 / 4 + 32 / 64
    assert bits_per_weight(int8_layer()) == pytest.approx(8 + 32 / 64)


def test_int8_scales_take_one_scale_of_scales_per_output_filter():
    """sos_k = fp32(max |s_k| / 127), 1.0 for a row of zeros; q = clip(rint(s / sos_k)); decoded fl(q * sos_k)."""
    scales = np.array([[0.5, -2.0, 1.0], [0.0, 0.0, 0.0], [3e-3, 1e-3, -6e-3]], np.float32)
    stored, sos = encode_scales(scales, "int8")
    assert stored.dtype == np.int8 and sos.dtype == np.float32
    np.testing.assert_array_equal(sos, [np.float32(2.0) / np.float32(127), 1.0, np.float32(6e-3) / np.float32(127)])
    np.testing.assert_array_equal(stored, [[32, -127, 64], [0, 0, 0], [64, 21, -127]])
    layer = pack_ternary_layer("fc", np.ones((3, 12), np.int8), scales, 4, np.zeros(3, np.float32), ACTIVATION,
                               scale_dtype="int8")
    np.testing.assert_array_equal(layer.scale_of_scales, sos)
    np.testing.assert_array_equal(layer.fp32_scales, stored.astype(np.float32) * sos[:, None])


def test_int8_scales_refuse_a_filter_whose_scale_of_scales_would_be_subnormal():
    scales = np.array([[1.0, 0.5], [1e-37, 0.0]], np.float32)
    with pytest.raises(ValueError, match=r"filter 1's largest scale 1e-37 is too small for int8 scales .* fp16"):
        encode_scales(scales, "int8")


def sos_with(index: int, value: float) -> np.ndarray:
    """The ternary test layer's 8 filters' scale-of-scales, all 1 but ``value`` at ``index``."""
    sos = np.ones(8, np.float32)
    sos[index] = value
    return sos


IN_RANGE = r"each must be a finite positive number within fp32's normal range"


@pytest.mark.parametrize("scale_of_scales, message", [
    (None, r"int8 scales need a scale-of-scales per output filter \(fp32 \[K\]\), got none"),
    (1.0, "scale-of-scales must be a numpy array, got float"),
    (np.ones(7, np.float32), r"scale-of-scales is float32 \(7,\), expected float32 \(8,\)"),
    (np.ones((8, 1), np.float32), r"scale-of-scales is float32 \(8, 1\), expected float32 \(8,\)"),
    (np.ones(8, np.float64), r"scale-of-scales is float64 \(8,\), expected float32 \(8,\)"),
    (sos_with(3, np.nan), f"the scale-of-scales of filter 3 is nan; {IN_RANGE}"),
    (sos_with(4, np.inf), f"the scale-of-scales of filter 4 is inf; {IN_RANGE}"),
    (sos_with(0, 0.0), f"the scale-of-scales of filter 0 is 0.0; {IN_RANGE}"),
    (sos_with(7, -0.5), f"the scale-of-scales of filter 7 is -0.5; {IN_RANGE}"),
    (sos_with(2, 1e-40), f"the scale-of-scales of filter 2 is 1e-40; {IN_RANGE}"),
    (sos_with(5, 3e38), r"int8 scales of filter 5 times its scale-of-scales 3e\+38 overflow fp32"),
])
def test_a_layer_with_int8_scales_refuses_a_bad_scale_of_scales(scale_of_scales, message):
    layer = ternary_layer("int8")[0]
    with pytest.raises(ValueError, match=f"layer 'features.3': {message}"):
        dataclasses.replace(layer, scale_of_scales=scale_of_scales)


def test_int8_scales_refuse_minus_128_and_other_scales_refuse_a_scale_of_scales():
    layer = ternary_layer("int8")[0]
    scales = layer.scales.copy()
    scales[6, 1] = -128
    with pytest.raises(ValueError, match=r"int8 scales must lie in \[-127, 127\], found -128 in filter 6"):
        dataclasses.replace(layer, scales=scales)
    fp16 = ternary_layer("fp16")[0]
    with pytest.raises(ValueError, match=r"only int8 scales take a scale-of-scales, got one with fp16 scales "
                                         r"\(float32 \(8,\)\)"):
        dataclasses.replace(fp16, scale_of_scales=np.ones(8, np.float32))


def rewrite(path, edit_metadata=None, edit_tensors=None):
    """Re-save a packed file with edited header fields or arrays, keeping everything else."""
    with safe_open(path, framework="np") as handle:
        metadata, tensors = handle.metadata(), {key: handle.get_tensor(key) for key in handle.keys()}
    if edit_metadata:
        edit_metadata(metadata)
    if edit_tensors:
        edit_tensors(tensors)
    save_file(tensors, path, metadata=metadata)


def tensor_offset(path, name) -> int:
    """Byte offset of tensor ``name``'s data in a safetensors file."""
    with open(path, "rb") as handle:
        header_size = struct.unpack("<Q", handle.read(8))[0]
        header = json.loads(handle.read(header_size))
    return 8 + header_size + header[name]["data_offsets"][0]


def test_loader_rejects_a_code_byte_with_the_unused_pattern(tmp_path):
    path = write(tmp_path, [ternary_layer()[0]])
    data = bytearray(path.read_bytes())
    data[tensor_offset(path, "features.3.weights")] = 0b10_00_00_00
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"model.safetensors.*features.3.*0b10"):
        load_packed(path)


def test_loader_catches_a_flipped_byte_that_still_decodes(tmp_path):
    path = write(tmp_path, [ternary_layer()[0]])
    data = bytearray(path.read_bytes())
    data[tensor_offset(path, "features.3.weights")] ^= 0b01  # +1 <-> 0 in the first field
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="model.safetensors.*digest mismatch"):
        load_packed(path)


def test_loader_rejects_a_truncated_file(tmp_path):
    path = write(tmp_path, [ternary_layer()[0]])
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(ValueError, match="model.safetensors could not be read.*truncated or corrupt"):
        load_packed(path)


@pytest.mark.parametrize("version", ["1", "2", "4"])
def test_loader_rejects_another_format_version_and_says_how_to_re_export(tmp_path, version):
    """Version 1 (one running activation, no dilation) is refused, not converted."""
    path = write(tmp_path, [ternary_layer()[0]])

    def version_1(meta):
        meta["format_version"] = version
        meta["graph"] = json.dumps([{"op": "layer", "name": "features.3"}])

    rewrite(path, edit_metadata=version_1)
    with pytest.raises(ValueError, match=fr"model.safetensors: format version '{version}' is not supported; this "
                                         r"reader reads version 3 .*export_packed\(model, path\)"):
        load_packed(path)


def test_a_version_2_file_with_one_scale_of_scales_per_layer_is_refused(tmp_path):
    """Version 2 kept int8 scales' scale-of-scales as one JSON float per layer: refused, naming the version."""
    path = write(tmp_path, [ternary_layer("int8")[0]])

    def as_version_2(meta):
        meta["format_version"] = "2"
        meta["layers"] = json.dumps([{**entry, "scale_of_scales": 0.0157} for entry in json.loads(meta["layers"])])

    rewrite(path, edit_metadata=as_version_2, edit_tensors=lambda tensors: tensors.pop("features.3.scale_of_scales"))
    with pytest.raises(ValueError, match=r"model.safetensors: format version '2' is not supported; this reader reads "
                                         r"version 3 and does not convert older files: re-export it"):
        load_packed(path)


def test_loader_rejects_metadata_that_contradicts_the_arrays(tmp_path):
    path = write(tmp_path, [ternary_layer()[0]])

    def claim_more_filters(meta):
        layers = json.loads(meta["layers"])
        layers[0]["weight_shape"] = [16, 6, 3, 3]
        meta["layers"] = json.dumps(layers)

    rewrite(path, edit_metadata=claim_more_filters)
    with pytest.raises(ValueError, match=r"features.3.*codes is uint8 \(8, 14\), expected uint8 \(16, 14\)"):
        load_packed(path)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.update({"features.3.scales": t["features.3.scales"][:, :-1].copy()}), "scales is float32"),
    (lambda t: t.update({"features.3.bias": t["features.3.bias"].astype(np.float64)}), "bias is float64"),
    (lambda t: t["features.3.scales"].__setitem__((0, 0), np.inf), "scales hold NaN or Inf"),
    (lambda t: t.pop("features.3.bias"), "arrays .* are missing"),
])
def test_loader_rejects_arrays_of_the_wrong_dtype_shape_or_value(tmp_path, edit, message):
    path = write(tmp_path, [ternary_layer()[0]])
    rewrite(path, edit_tensors=edit)
    with pytest.raises(ValueError, match=message):
        load_packed(path)


def test_a_layer_whose_group_sum_could_overflow_int32_is_rejected():
    codes = np.zeros((1, 9_000_000), dtype=np.int8)
    with pytest.raises(ValueError, match="beyond the int32 accumulator"):
        pack_ternary_layer("huge", codes, np.ones((1, 1), np.float32), 9_000_000, np.zeros(1, np.float32), ACTIVATION)


def test_int8_scales_bound_the_sum_over_the_whole_filter():
    """With int8 scales a filter is one int32 sum of weights t * q, up to L * 127 * 255: 66,311 weights
    of uint8 input fit, 66,312 do not, whatever N is (fp32 scales bound each group of N alone)."""
    def layer(length, scale_dtype):
        return pack_ternary_layer("fc", np.ones((1, length), np.int8), np.ones((1, length // 8), np.float32), 8,
                                  np.zeros(1, np.float32), ACTIVATION, scale_dtype=scale_dtype)

    layer(66_312, "fp32")
    layer(66_311 // 8 * 8, "int8")
    with pytest.raises(ValueError, match=r"layer 'fc': a group sum can reach 2147514120, beyond the int32"):
        layer(66_312, "int8")


def node(op, inputs, output, **fields):
    return {"op": op, **fields, "inputs": inputs, "output": output}


INPUT = node("input", [], "x")
CONV = node("conv", ["x"], "c", layer="features.3")  # 6 -> 8 channels


@pytest.mark.parametrize("graph, message", [
    (None, "no network graph"),
    ([INPUT, node("softmax", ["x"], "s")], r"graph node 1 \('s', op 'softmax'\): op must be one of"),
    ([INPUT, node("conv", ["x"], "c", layer="features.9")], "graph node 1 .*no layer 'features.9' in the file"),
    ([INPUT, node("conv", ["y"], "c", layer="features.3")], "reads 'y' which no node defines"),
    ([INPUT, node("relu", ["c"], "r"), node("conv", ["r"], "c", layer="features.3")],
     r"graph node 1 \('r', op 'relu'\): reads 'c' before it is defined"),
    ([INPUT, CONV, node("relu", ["c"], "c")], "defines 'c' a second time"),
    ([INPUT, CONV, node("conv", ["c"], "d", layer="features.3")], "layer 'features.3' is used a second time"),
    ([INPUT, node("relu", ["x"], "r")], r"no graph node uses the layers \['features.3'\]"),
    ([INPUT, node("linear", ["x"], "c", layer="features.3")], "features.3' is a conv layer"),
    ([INPUT, node("flatten", ["x"], "f"), node("conv", ["f"], "c", layer="features.3")], "needs a NHWC input"),
    ([INPUT, CONV, node("subsample_pad", ["c"], "s", subsample=2, pad_channels=2), node("add", ["c", "s"], "a")],
     r"graph node 3 \('a', op 'add'\): adds values of different channels: 8 and 12"),
    ([INPUT, CONV, node("maxpool", ["c"], "p", kernel=[2, 2], stride=[2, 2])], "fields must be"),
    ([INPUT, CONV, node("maxpool", ["c"], "p", kernel=[2, 2], stride=[0, 2], padding=[0, 0])], "stride .* out of range"),
    ([INPUT, CONV, node("input", [], "y")], "the first node, and only it, must be the input"),
    ([INPUT, CONV, node("relu", ["x"], "r")], r"must be read; unread: \['c'\]"),
])
def test_integer_net_rejects_a_graph_it_cannot_run(tmp_path, graph, message):
    path = save_packed(tmp_path / "model.safetensors", [ternary_layer()[0]], graph=graph)
    with pytest.raises(ValueError, match=f"model.safetensors: .*{message}"):
        IntegerNet.load(path)


def test_integer_net_rejects_a_linear_layer_whose_fan_in_the_graph_contradicts(tmp_path):
    graph = [INPUT, CONV, node("adaptive_avgpool", ["c"], "p", output_size=[2, 2]), node("flatten", ["p"], "f"),
             node("linear", ["f"], "y", layer="classifier")]
    path = save_packed(tmp_path / "model.safetensors", [ternary_layer()[0], int8_layer()], graph=graph)
    with pytest.raises(ValueError, match=r"graph node 4 \('y', op 'linear'\): needs 64 input channels, its input has 32"):
        IntegerNet.load(path)


def test_the_integer_path_imports_without_torch():
    check = "import sys, fgq_pipeline.kernels; assert 'torch' not in sys.modules, 'torch was imported'"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
