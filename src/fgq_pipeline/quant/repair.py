"""Post-training repairs and calibration passes over a fake-quant model.

Plain per-group ternarization shifts and rescales every layer's outputs; on small networks that
collapses accuracy. Bias correction removes the mean shift per output channel and BatchNorm
re-estimation recomputes the statistics the ternary weights actually produce. Activation scales
are calibrated last, on the repaired network.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..modes import eval_mode
from .activation import ActQuantizer
from .batches import batch_images
from .config import QuantConfig, ReconstructConfig
from .gptq import gptq_ternarize
from .modules import QuantConv2d
from .surgery import quant_layers


def post_training_quantize(model: nn.Module, config: QuantConfig, calibration_batches: Iterable,
                           fp32_model: nn.Module | None = None, reconstruct: ReconstructConfig | None = None,
                           seed: int = 0) -> nn.Module:
    """Weight repairs (as switched on in ``config``), then activation calibration; with
    ``rounding: reconstruct``, block reconstruction against ``fp32_model`` last (``reconstruct``'s
    settings, the defaults when None)."""
    if config.rounding == "reconstruct" and fp32_model is None:
        raise ValueError("rounding 'reconstruct' learns against the FP32 model: pass fp32_model")
    repair_weights(model, config, calibration_batches)
    calibrate_activations(model, calibration_batches)
    if config.rounding == "reconstruct":
        # imported here because reconstruct imports this module (its BN re-estimation)
        from .reconstruct import reconstruct_blocks

        reconstruct_blocks(model, fp32_model, calibration_batches, reconstruct or ReconstructConfig(), seed)
    return model


def repair_weights(model: nn.Module, config: QuantConfig, calibration_batches: Iterable) -> nn.Module:
    """GPTQ rounding, bias correction and BN re-estimation, all with float activations.

    Bias correction measures the shift against the FP32 weights (GPTQ has already replaced them)
    and runs before BN re-estimation: a shift added after BN statistics were taken would move the
    normalised outputs again.
    """
    float_weights = {layer: layer.weight.detach().clone() for _, layer in quant_layers(model)}
    if config.rounding == "gptq":
        gptq_ternarize(model, calibration_batches)
    if config.bias_correction:
        correct_bias(model, calibration_batches, float_weights)
    if config.bn_reestimate:
        reestimate_batchnorm(model, calibration_batches)
    return model


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, batches: Iterable) -> None:
    """Recompute every BatchNorm's running statistics as an exact average over ``batches``."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [bn.momentum for bn in norms]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
    try:
        with eval_mode(model, train=norms):
            for x in batch_images(batches, model):
                model(x)
    finally:
        for bn, momentum in zip(norms, momenta):
            bn.momentum = momentum


@torch.no_grad()
def correct_bias(model: nn.Module, batches: Iterable, float_weights: dict[nn.Module, torch.Tensor] | None = None) -> None:
    """Add E[(W - Q(W)) x] per output channel to each quantized layer, on its actual inputs.

    W is the layer's FP32 weight: ``float_weights[layer]`` where given, else its current weight.
    """
    float_weights = float_weights or {}
    layers = [layer for _, layer in quant_layers(model)]
    sums: dict[nn.Module, torch.Tensor] = {}
    counts: dict[nn.Module, int] = {}

    def record(layer: nn.Module, args: tuple, _output: torch.Tensor) -> None:
        x = layer.input_quantizer(args[0])
        delta = float_weights.get(layer, layer.weight) - layer.quantized_weight()
        if isinstance(layer, QuantConv2d):
            shift = layer._conv_forward(x, delta, None)
            dims = (0, 2, 3)
            n = shift.shape[0] * shift.shape[2] * shift.shape[3]
        else:
            shift = F.linear(x, delta)
            dims = tuple(range(shift.dim() - 1))
            n = shift[..., 0].numel()
        sums[layer] = sums.get(layer, 0) + shift.sum(dim=dims)
        counts[layer] = counts.get(layer, 0) + n

    handles = [layer.register_forward_hook(record) for layer in layers]
    try:
        with eval_mode(model):
            for x in batch_images(batches, model):
                model(x)
    finally:
        for handle in handles:
            handle.remove()
    for layer in layers:
        layer.bias_correction += sums[layer] / counts[layer]


@torch.no_grad()
def calibrate_activations(model: nn.Module, batches: Iterable) -> None:
    """Fix every enabled activation quantizer's scale and sign from ``batches``."""
    quantizers = [m for m in model.modules() if isinstance(m, ActQuantizer) and m.enabled]
    if not quantizers:
        return
    with eval_mode(model):
        for q in quantizers:
            q.start_calibration()
        for x in batch_images(batches, model):
            model(x)
        for q in quantizers:
            q.finish_calibration()
