"""What the benchmark times: one layer or a whole network, run four ways on the same weights and
input. Every candidate takes float32 in and gives float32 out, so input quantization is inside
each timed call (torch's and ONNX Runtime's int8 models quantize inside theirs too).

- ``numba_ternary``: the packed FGQ layer through :class:`IntegerNet` (quantize, Numba GEMM reading the input in place);
- ``torch_fp32``: the float layer or network, torch's own kernels;
- ``torch_int8``: torch's int8 backend (dynamic quantized Linear; static quantized Conv2d;
  FX-quantized whole network), where the running torch build has one;
- ``onnxruntime_int8``: the float layer or network exported to ONNX and quantized by ONNX Runtime
  (dynamic for linear layers; static, calibrated on the same images, for convs and networks), where
  the optional onnxruntime is installed.

Weights are Gaussian (He scale) for single layers, as only their shapes and the share of zero codes
matter for speed; the CIFAR ResNet uses the pretrained checkpoint when it is given; torchvision's
networks keep their random initialisation (the bench downloads nothing). Scales are
stored as fp32 unless a workload says otherwise (``scales``): a batch-1 layer reads them as stored,
so fp16 or int8 scales cut what it streams at N=4 (the outputs change by the scales' rounding).
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn

from fgq_pipeline.kernels import IntegerNet, PackedModel, export_packed, load_packed
from fgq_pipeline.kernels.export import pack_quant_layer
from fgq_pipeline.models import CifarResNet, load_weights
from fgq_pipeline.quant import (
    QuantConfig,
    calibrate_activations,
    count_ops,
    paper_speedup,
    quantize_model,
)
from fgq_pipeline.quant.activation import ActQuantizer
from fgq_pipeline.quant.modules import QuantConv2d, QuantLinear, WeightFormat

from . import ort

NUMBA, FP32, INT8, ORT = "numba_ternary", "torch_fp32", "torch_int8", "onnxruntime_int8"
DEFAULT_SCALES = "fp32"  # how the packed layers store their scales unless a workload says otherwise
CANDIDATES = (NUMBA, FP32, INT8, ORT)
TORCHVISION = "torchvision_network"  # the workload kind of whole torchvision classifiers
CIFAR_IMAGE = (3, 32, 32)
CIFAR_CALIBRATION = (64,) * 4  # images per calibration batch
# A few generated images: at 224x224 each costs a fake-quant and an FX-observed forward, and the
# timings do not depend on the activation scales they give
TORCHVISION_CALIBRATION = (4, 4)
# torch deprecates its quantized tensors in favour of torchao; they are still the int8 path it ships
TORCH_QUANTIZED_DEPRECATION = "torch.quantize_per_tensor, torch.quantize_per_channel"


@dataclass
class Workload:
    """``candidates``: zero-argument calls by candidate name; ``skipped``: candidate -> reason;
    ``potential_speedup``: the paper's cost model for this layer or network; ``weight_macs``: its
    multiply-accumulates with a weight, whole batch; ``on_threads``: calls made before timing at a
    thread count (an ONNX Runtime session fixes its threads when it is made)."""

    name: str
    kind: str
    shape: str
    batch: int
    group_size: int
    potential_speedup: float
    candidates: dict[str, Callable[[], object]]
    weight_macs: int = field(kw_only=True)
    skipped: dict[str, str] = field(default_factory=dict)
    scales: str = DEFAULT_SCALES
    on_threads: list[Callable[[int], None]] = field(default_factory=list)


def linear_workload(name: str, in_features: int, out_features: int, batch: int, group_size: int,
                    seed: int = 0, scale_dtype: str = DEFAULT_SCALES) -> Workload:
    generator = torch.Generator().manual_seed(seed)
    linear = _he_init(nn.Linear(in_features, out_features), generator)
    x = torch.relu(torch.randn(batch, in_features, generator=generator))
    quantized = QuantLinear.from_float(linear, WeightFormat("ternary", group_size), ActQuantizer(8))
    packed = _pack(name, quantized, x, scale_dtype)
    x_numpy = x.numpy()
    with warnings.catch_warnings():  # torch.ao's eager quantization warns that it is moving to torchao
        warnings.simplefilter("ignore")
        int8 = torch.ao.quantization.quantize_dynamic(nn.Sequential(linear), {nn.Linear}, dtype=torch.qint8)
    potential = paper_speedup(min(group_size, in_features))
    workload = Workload(name, "linear", f"{in_features}->{out_features}", batch, group_size, potential, {
        NUMBA: lambda: packed.run_layer(packed.layers[name], x_numpy),
        FP32: lambda: linear(x),
        INT8: lambda: int8(x),
    }, scales=scale_dtype, weight_macs=batch * count_ops(linear, (in_features,)).macs)
    return _with_ort(workload, lambda: ort.dynamic_int8(linear, x))


def conv_workload(name: str, in_channels: int, out_channels: int, kernel: int, stride: int, padding: int,
                  size: int, batch: int, group_size: int, seed: int = 0, scale_dtype: str = DEFAULT_SCALES) -> Workload:
    generator = torch.Generator().manual_seed(seed)
    conv = _he_init(nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding), generator)
    x = torch.relu(torch.randn(batch, in_channels, size, size, generator=generator))
    packed = _pack(name, QuantConv2d.from_float(conv, WeightFormat("ternary", group_size), ActQuantizer(8)), x,
                   scale_dtype)
    x_nhwc = np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())
    shape = f"{in_channels}->{out_channels} {kernel}x{kernel}/{stride} @{size}x{size}"
    potential = paper_speedup(min(group_size, in_channels))
    workload = Workload(name, "conv", shape, batch, group_size, potential, {
        NUMBA: lambda: packed.run_layer(packed.layers[name], x_nhwc),
        FP32: lambda: conv(x),
    }, scales=scale_dtype, weight_macs=batch * count_ops(conv, (in_channels, size, size)).macs)
    try:
        workload.candidates[INT8] = _int8_conv(conv, x)
    except (RuntimeError, AssertionError) as error:
        workload.skipped[INT8] = f"torch has no int8 conv backend here: {error}"
    return _with_ort(workload, lambda: ort.static_int8(conv, x, [x]))


def network_workload(depth: int, batch: int, group_size: int, checkpoint: str | Path | None,
                     seed: int = 0, scale_dtype: str = DEFAULT_SCALES) -> Workload:
    """A whole CIFAR ResNet, from the checkpoint when it exists, its scales stored as ``scale_dtype``."""
    torch.manual_seed(seed)
    fp32 = CifarResNet(depth).eval()
    weights = "random"
    if checkpoint is not None and Path(checkpoint).is_file():
        load_weights(fp32, checkpoint)
        weights = Path(checkpoint).name
    return _whole_network(f"cifar_resnet{depth}", "network", fp32, f"{weights}, 3x32x32 images", CIFAR_IMAGE, batch,
                          group_size, CIFAR_CALIBRATION, seed, scale_dtype)


def torchvision_workload(arch: str, size: int, group_size: int, seed: int = 0) -> Workload:
    """A whole torchvision classifier (``torchvision.models.get_model(arch)``, random weights) at
    batch 1 on ``size`` x ``size`` images."""
    torch.manual_seed(seed)
    fp32 = torchvision.models.get_model(arch, weights=None).eval()
    return _whole_network(f"torchvision_{arch}", TORCHVISION, fp32, f"random, 3x{size}x{size} images",
                          (3, size, size), 1, group_size, TORCHVISION_CALIBRATION, seed)


def _whole_network(name: str, kind: str, fp32: nn.Module, shape: str, image: tuple[int, int, int], batch: int,
                   group_size: int, calibration_sizes: tuple[int, ...], seed: int,
                   scale_dtype: str = DEFAULT_SCALES) -> Workload:
    """``fp32`` four ways: FGQ at ``group_size`` with 8-bit activations (first/last layers 8-bit),
    calibrated on generated images and exported to a packed file that IntegerNet runs; the float
    network; torch's FX and ONNX Runtime's static int8 quantization calibrated on the same images."""
    generator = torch.Generator().manual_seed(seed)
    calibration = [torch.randn(images, *image, generator=generator) for images in calibration_sizes]
    # max ranges: speed does not depend on them, and they calibrate in one pass
    config = QuantConfig(group_size=group_size, act_bits=8, act_calibration="max")
    quantized = quantize_model(copy.deepcopy(fp32), config)
    calibrate_activations(quantized, [(images, None) for images in calibration])
    net = IntegerNet(_in_memory(quantized, scale_dtype))
    images = torch.randn(batch, *image, generator=generator)
    images_numpy = images.numpy()
    ops = count_ops(quantized, image)
    workload = Workload(name, kind, shape, batch, group_size, ops.potential_speedup, {
        NUMBA: lambda: net(images_numpy),
        FP32: lambda: fp32(images),
    }, scales=scale_dtype, weight_macs=batch * ops.macs)
    try:
        int8 = _int8_network(fp32, calibration)
        workload.candidates[INT8] = lambda: int8(images)
    except Exception as error:  # noqa: BLE001 - FX tracing or a missing backend: report, do not abort
        workload.skipped[INT8] = f"torch FX int8 quantization failed: {type(error).__name__}: {error}"
    return _with_ort(workload, lambda: ort.static_int8(fp32, images, calibration))


def _with_ort(workload: Workload, build: Callable[[], ort.OrtCandidate]) -> Workload:
    """Adds the ONNX Runtime candidate, or records in one line why there is none: the package is
    optional, and a failed export or quantization must not stop the other candidates' timings."""
    try:
        candidate = build()
    except ImportError as error:
        package = (error.name or "onnxruntime").split(".")[0]
        workload.skipped[ORT] = f"{package} is not installed: {ort.INSTALL_HINT}"
        return workload
    except Exception as error:  # noqa: BLE001 - an unsupported operator or opset: report, do not abort
        reason = (str(error).strip().splitlines() or [""])[0]
        workload.skipped[ORT] = f"ONNX export or int8 quantization failed: {type(error).__name__}: {reason}"
        return workload
    workload.candidates[ORT] = candidate
    workload.on_threads.append(candidate.set_threads)
    return workload


def _he_init(layer: nn.Module, generator: torch.Generator) -> nn.Module:
    fan_in = layer.weight[0].numel()
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
        layer.bias.zero_()
    return layer.eval()


def _pack(name: str, layer: nn.Module, x: torch.Tensor, scale_dtype: str = DEFAULT_SCALES) -> IntegerNet:
    """An IntegerNet holding just ``layer``, its input scale calibrated on ``x``."""
    calibrate_activations(nn.Sequential(layer), [(x, None)])
    packed = pack_quant_layer(name, layer, None, scale_dtype)
    graph = [{"op": "input", "inputs": [], "output": "x"}]  # the bench calls run_layer: the graph only validates
    if packed.kind == "linear":
        graph.append({"op": "flatten", "inputs": ["x"], "output": "features"})
    graph.append({"op": packed.kind, "layer": packed.name, "inputs": [graph[-1]["output"]], "output": "y"})
    return IntegerNet(PackedModel({packed.name: packed}, graph))


def _in_memory(model: nn.Module, scale_dtype: str = DEFAULT_SCALES) -> PackedModel:
    """The packed model exactly as a file round trip gives it (the loader validates every layer)."""
    with tempfile.TemporaryDirectory() as directory:
        return load_packed(export_packed(model, Path(directory) / "model.safetensors", scale_dtype))


def _int8_conv(conv: nn.Conv2d, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    """Static int8 Conv2d on torch's quantized engine: per-channel int8 weights, uint8 input."""
    from torch.ao.nn.quantized import Conv2d as QuantizedConv2d

    weight = conv.weight.detach()
    channel_scales = (weight.abs().flatten(1).amax(1) / 127).clamp(min=1e-12).double()
    qweight = torch.quantize_per_channel(weight, channel_scales, torch.zeros(len(channel_scales), dtype=torch.long),
                                         0, torch.qint8)
    qconv = QuantizedConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                            padding=conv.padding)
    qconv.set_weight_bias(qweight, conv.bias.detach())
    with torch.no_grad():
        out_max = float(conv(x).abs().max())
    qconv.scale, qconv.zero_point = out_max / 127, 128
    in_scale = float(x.max()) / 255
    qconv(torch.quantize_per_tensor(x, in_scale, 0, torch.quint8))  # fails here if there is no backend
    return lambda: qconv(torch.quantize_per_tensor(x, in_scale, 0, torch.quint8)).dequantize()


def _int8_network(fp32: nn.Module, calibration: list[torch.Tensor]) -> nn.Module:
    """The float network statically quantized to int8 by torch's FX graph mode (x86 backend)."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(copy.deepcopy(fp32).eval(), get_default_qconfig_mapping(),
                              example_inputs=(calibration[0],))
        with torch.no_grad():
            for images in calibration:
                prepared(images)
        return convert_fx(prepared)
