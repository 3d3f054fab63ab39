"""One calibrated fake-quant layer (QuantConv2d / QuantLinear) as a :class:`PackedLayer`.

The BatchNorm that follows a conv is folded in: every group lies in one output filter, so
gamma / sigma multiplies that filter's group scales (the codes stay) and the shift goes into the
bias together with the layer bias and its bias correction.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fgq_pipeline.quant.modules import INT8_MAX, QuantLinear

from .activations import ActivationFormat
from .packed import PackedLayer, pack_int8_layer, pack_ternary_layer


def pack_quant_layer(name: str, layer: nn.Module, norm: nn.BatchNorm2d | None, scale_dtype: str) -> PackedLayer:
    """One quantized layer, with the BatchNorm that follows it (if any) folded in."""
    out_channels = layer.weight.shape[0]
    bias = _cpu(layer.bias_correction) + (_cpu(layer.bias) if layer.bias is not None else 0.0)
    filter_scale = torch.ones(out_channels, dtype=torch.float64)
    if norm is not None:
        filter_scale, shift = _batch_norm_affine(name, norm)
        bias = bias * filter_scale + shift
    try:
        geometry = {} if isinstance(layer, QuantLinear) else conv_geometry(layer)
    except ValueError as error:
        raise ValueError(f"conv {name!r}: {error}") from None
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


def conv_geometry(conv: nn.Conv2d) -> dict:
    """stride, padding and dilation of a conv the kernels can run; ValueError saying why not otherwise."""
    if conv.groups != 1:
        raise ValueError(f"groups={conv.groups}: the integer kernels run dense convolutions (groups=1) only")
    if conv.padding_mode != "zeros":
        raise ValueError(f"padding_mode={conv.padding_mode!r}: the integer kernels pad with zeros only")
    dilation = _pair(conv.dilation)
    padding = conv.padding
    if padding == "valid":
        padding = (0, 0)
    elif padding == "same":
        total = [d * (k - 1) for d, k in zip(dilation, conv.kernel_size)]
        if any(t % 2 for t in total):
            raise ValueError(f"padding='same' with kernel {conv.kernel_size} pads one side more than the other")
        padding = tuple(t // 2 for t in total)
    return {"stride": _pair(conv.stride), "padding": _pair(padding), "dilation": dilation}


def _activation(name: str, layer: nn.Module) -> ActivationFormat:
    quantizer = layer.input_quantizer
    if not quantizer.enabled or not quantizer.calibrated:
        raise ValueError(f"layer {name!r} has no calibrated integer input (act_bits={quantizer.bits}, "
                         f"scale={float(quantizer.scale)}); run post_training_quantize with act_bits <= 8 first")
    return ActivationFormat(scale=float(quantizer.scale), bits=quantizer.bits, signed=bool(quantizer.signed))


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _cpu(tensor: torch.Tensor) -> torch.Tensor:
    """float64 on the CPU: BN folding in double precision, then one rounding to fp32."""
    return tensor.detach().to(device="cpu", dtype=torch.float64)


def _fp32(tensor: torch.Tensor) -> np.ndarray:
    return tensor.to(torch.float32).numpy()
