"""Model surgery: swap every Conv2d / Linear for its fake-quant twin, in place."""

from __future__ import annotations

from torch import nn

from .activation import ActQuantizer
from .config import QuantConfig
from .modules import QUANT_LAYERS, QuantConv2d, QuantLinear, WeightFormat


def quantize_model(model: nn.Module, config: QuantConfig) -> nn.Module:
    """Replace Conv2d/Linear layers of ``model`` by fake-quant layers as ``config`` says.

    The first Conv2d and the last Linear follow ``config.policy``; all others get ternary groups (or
    the uniform grids of ``config.weight_format``).
    Input quantizers start uncalibrated (float) until :func:`calibrate_activations` runs.
    """
    layers = [
        (name, module) for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear)) and not isinstance(module, QUANT_LAYERS)
    ]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no Conv2d or Linear layer to quantize")
    first = _first_conv(layers)
    last = next((name for name, m in reversed(layers) if isinstance(m, nn.Linear)), None)
    bits = config.uniform_bits
    grouped = WeightFormat("ternary" if bits is None else "uniform", config.group_size, config.solver,
                           config.scale_dtype, bits or WeightFormat.bits)
    for name, module in layers:
        keep_8bit = config.policy == "first_last_8bit" and name in (first, last)
        fmt = WeightFormat("int8") if keep_8bit else grouped
        swap = QuantConv2d if isinstance(module, nn.Conv2d) else QuantLinear
        _set_submodule(model, name, swap.from_float(module, fmt, _activation_quantizer(config, name == first)))
    return model


def _first_conv(layers: list[tuple[str, nn.Module]]) -> str | None:
    """The first Conv2d of ``layers`` (in module order): the one that reads the image."""
    return next((name for name, m in layers if isinstance(m, nn.Conv2d)), None)


def reset_activation_quantizers(model: nn.Module, config: QuantConfig) -> nn.Module:
    """Fresh, uncalibrated input quantizers with ``config``'s activation settings on every layer.

    Lets configs that differ only in activation settings share one weight-side repair.
    """
    layers = quant_layers(model)
    first = _first_conv(layers)
    for name, layer in layers:
        layer.input_quantizer = _activation_quantizer(config, name == first)
    return model


def _activation_quantizer(config: QuantConfig, reads_image: bool) -> ActQuantizer:
    bits = config.image_input_bits if reads_image else config.act_bits
    return ActQuantizer(bits, config.act_calibration, config.act_percentile, config.power_of_two_scale)


def quant_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, QUANT_LAYERS)]


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
