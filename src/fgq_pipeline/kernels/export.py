"""Export a calibrated fake-quant model to a packed file that :class:`IntegerNet` runs.

Each quantized layer is packed with the BatchNorm that follows it folded in: every group lies in
one output filter, so gamma / sigma multiplies that filter's group scales (the codes stay) and the
shift goes into the bias together with the layer bias and its bias correction. The network graph
(ReLU, pooling, residual adds, in float32 between quantized layers) is recorded by walking the two
architectures the project trains, DigitsCNN and CifarResNet, by their known attribute names; the
export imports neither (nor the model zoo behind them) so the runtime side stays numpy-only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from fgq_pipeline.quant.modules import INT8_MAX, QuantConv2d, QuantLinear

from .activations import ActivationFormat
from .packed import PackedLayer, pack_int8_layer, pack_ternary_layer
from .packed_file import save_packed
from .scales import validate_scale_dtype

DIGITS_CNN_LAYOUT = ("features", "pool", "flatten", "classifier")
CIFAR_RESNET_LAYOUT = ("conv1", "bn1", "relu", "layer1", "layer2", "layer3", "pool", "flatten", "linear")
BLOCK_LAYOUT = ("conv1", "bn1", "relu1", "conv2", "bn2", "shortcut", "relu2")
SHORTCUT_SUBSAMPLE = 2  # ChannelPadShortcut keeps every second row and column


def export_packed(model: nn.Module, path: str | Path, scale_dtype: str = "fp32") -> Path:
    """Pack every quantized layer of ``model`` (after quantize_model and calibration) into ``path``.

    Layers kept at 8 bits (first conv, last linear under first_last_8bit) run as int8 GEMMs, so
    the whole network consumes integer activations.
    """
    validate_scale_dtype(scale_dtype)
    names = tuple(name for name, _ in model.named_children())
    if names not in (DIGITS_CNN_LAYOUT, CIFAR_RESNET_LAYOUT):
        raise ValueError(f"export_packed runs DigitsCNN and CifarResNet only; {type(model).__name__} has "
                         f"children {names}")
    exporter = _Exporter(scale_dtype)
    with torch.no_grad():
        exporter.walk(list(model.named_children()))
    return save_packed(path, exporter.layers, exporter.graph)


class _Exporter:
    """Turns modules, in forward order, into packed layers and graph operations."""

    def __init__(self, scale_dtype: str):
        self.scale_dtype = scale_dtype
        self.layers: list[PackedLayer] = []
        self.graph: list[dict] = []

    def walk(self, children: list[tuple[str, nn.Module]], prefix: str = "") -> None:
        index = 0
        while index < len(children):
            name, module = children[index]
            following = children[index + 1][1] if index + 1 < len(children) else None
            norm = following if isinstance(following, nn.BatchNorm2d) else None
            self.module(prefix + name, module, norm)
            index += 2 if norm is not None else 1

    def module(self, name: str, module: nn.Module, norm: nn.BatchNorm2d | None) -> None:
        if isinstance(module, (QuantConv2d, QuantLinear)):
            self.layers.append(pack_quant_layer(name, module, norm, self.scale_dtype))
            self.graph.append({"op": "layer", "name": name})
        elif isinstance(module, nn.ReLU):
            self.graph.append({"op": "relu"})
        elif isinstance(module, nn.MaxPool2d):
            self.graph.append(_max_pool(name, module))
        elif isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1)):
            self.graph.append({"op": "global_avgpool"})
        elif isinstance(module, nn.Flatten):
            self.graph.append({"op": "flatten"})
        elif isinstance(module, nn.Sequential) and all(_is_block(block) for block in module):
            for index, block in enumerate(module):
                self.block(f"{name}.{index}.", block)
        elif isinstance(module, nn.Sequential):
            self.walk(list(module.named_children()), prefix=f"{name}.")
        else:
            raise ValueError(f"module {name!r} ({type(module).__name__}) has no integer equivalent; "
                             "export needs calibrated QuantConv2d/QuantLinear layers (run quantize_model first)")

    def block(self, prefix: str, block: nn.Module) -> None:
        """conv-BN-ReLU-conv-BN, plus the shortcut (identity or option A), then ReLU."""
        self.graph.append({"op": "save_shortcut"})
        self.module(prefix + "conv1", block.conv1, block.bn1)
        self.graph.append({"op": "relu"})
        self.module(prefix + "conv2", block.conv2, block.bn2)
        shortcut = block.shortcut
        if isinstance(shortcut, nn.Identity):
            self.graph.append({"op": "add_shortcut", "subsample": 1, "pad_channels": 0})
        elif hasattr(shortcut, "pad_each_side"):
            self.graph.append({"op": "add_shortcut", "subsample": SHORTCUT_SUBSAMPLE,
                               "pad_channels": int(shortcut.pad_each_side)})
        else:
            raise ValueError(f"shortcut {prefix}shortcut ({type(shortcut).__name__}) is neither the identity nor "
                             "the option-A channel-padding shortcut")
        self.graph.append({"op": "relu"})


def pack_quant_layer(name: str, layer: nn.Module, norm: nn.BatchNorm2d | None, scale_dtype: str) -> PackedLayer:
    """One quantized layer, with the BatchNorm that follows it (if any) folded in."""
    out_channels = layer.weight.shape[0]
    bias = _cpu(layer.bias_correction) + (_cpu(layer.bias) if layer.bias is not None else 0.0)
    filter_scale = torch.ones(out_channels, dtype=torch.float64)
    if norm is not None:
        filter_scale, shift = _batch_norm_affine(name, norm)
        bias = bias * filter_scale + shift
    geometry = _geometry(name, layer)
    activation = _activation(name, layer)
    fmt = layer.weight_format
    if fmt.kind == "int8":
        weights, channel_scales = _int8_per_channel(layer)
        scales = channel_scales.double() * filter_scale
        return pack_int8_layer(name, weights.numpy(), _fp32(scales), _fp32(bias), activation, **geometry)
    if fmt.kind != "ternary":
        raise ValueError(f"layer {name!r} keeps {fmt.kind} weights; the integer path needs ternary or int8")
    ternary = layer.ternary_weights()
    if not isinstance(ternary.group_size, int) or ternary.neg_scales is not None:
        raise ValueError(f"layer {name!r}: the packed format holds one scale per group of N input channels; "
                         f"group_size={ternary.group_size!r}, solver={ternary.solver!r} is not supported")
    scales = _cpu(ternary.scales) * filter_scale.view(-1, *([1] * (ternary.scales.dim() - 1)))
    return pack_ternary_layer(
        name, ternary.codes.cpu().numpy(), _fp32(scales), ternary.effective_group_size, _fp32(bias), activation,
        scale_dtype=scale_dtype, **geometry,
    )


def _int8_per_channel(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer weights and per-filter scales whose product is exactly the layer's fake-quant weight."""
    weight = layer.weight.detach().cpu()
    max_abs = weight.abs().flatten(1).amax(dim=1).clamp(min=1e-12)
    scale = max_abs / INT8_MAX
    view = scale.view(-1, *([1] * (weight.dim() - 1)))
    integers = torch.clamp(torch.round(weight / view), -INT8_MAX, INT8_MAX)
    if not torch.equal(integers * view, layer.quantized_weight().detach().cpu()):
        raise ValueError("int8 weights times their scales differ from the layer's fake-quant weights; "
                         "quantize_int8_per_channel changed and the export must follow it")
    return integers.to(torch.int8), scale


def _batch_norm_affine(name: str, norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as y * scale + shift (float64)."""
    if norm.running_mean is None or norm.running_var is None:
        raise ValueError(f"the BatchNorm after {name!r} tracks no running statistics, so it cannot be folded")
    scale = 1.0 / torch.sqrt(_cpu(norm.running_var) + norm.eps)
    if norm.affine:
        scale = scale * _cpu(norm.weight)
    shift = -_cpu(norm.running_mean) * scale + (_cpu(norm.bias) if norm.affine else 0.0)
    return scale, shift


def _geometry(name: str, layer: nn.Module) -> dict:
    if isinstance(layer, QuantLinear):
        return {}
    if layer.groups != 1 or tuple(layer.dilation) != (1, 1) or layer.padding_mode != "zeros" or isinstance(
            layer.padding, str):
        raise ValueError(f"conv {name!r}: only groups=1, dilation 1 and explicit zero padding are supported, got "
                         f"groups={layer.groups}, dilation={layer.dilation}, padding={layer.padding!r} "
                         f"({layer.padding_mode})")
    return {"stride": tuple(int(s) for s in layer.stride), "padding": tuple(int(p) for p in layer.padding)}


def _activation(name: str, layer: nn.Module) -> ActivationFormat:
    quantizer = layer.input_quantizer
    if not quantizer.enabled or not quantizer.calibrated:
        raise ValueError(f"layer {name!r} has no calibrated integer input (act_bits={quantizer.bits}, "
                         f"scale={float(quantizer.scale)}); run post_training_quantize with act_bits <= 8 first")
    return ActivationFormat(scale=float(quantizer.scale), bits=quantizer.bits, signed=bool(quantizer.signed))


def _max_pool(name: str, pool: nn.MaxPool2d) -> dict:
    kernel, stride = _pair(pool.kernel_size), _pair(pool.stride if pool.stride is not None else pool.kernel_size)
    if _pair(pool.padding) != (0, 0) or _pair(pool.dilation) != (1, 1) or pool.ceil_mode:
        raise ValueError(f"max pool {name!r}: only unpadded, undilated, floor-mode pooling is supported")
    return {"op": "maxpool", "kernel": list(kernel), "stride": list(stride)}


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _is_block(module: nn.Module) -> bool:
    return tuple(name for name, _ in module.named_children()) == BLOCK_LAYOUT


def _cpu(tensor: torch.Tensor) -> torch.Tensor:
    """float64 on the CPU: BN folding in double precision, then one rounding to fp32."""
    return tensor.detach().to(device="cpu", dtype=torch.float64)


def _fp32(tensor: torch.Tensor) -> np.ndarray:
    return tensor.to(torch.float32).numpy()
