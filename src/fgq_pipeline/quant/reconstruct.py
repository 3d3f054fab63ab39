"""Block reconstruction (AdaRound / BRECQ / QDrop ideas) for ternary groups: ``rounding: reconstruct``.

Rounding each group to its nearest ternary codes minimises the weight error, not the error of what
the network computes. Here, block by block in execution order (each residual block, and every
quantized layer outside one: the stem, the classifier), the codes, the group scales, the input
activation steps and a per-channel bias are learned so that the block's output on calibration
images matches the FP32 block's. The block reads what the already-reconstructed quantized
predecessors produce (BRECQ), so it also learns to absorb their errors; while it learns, every
activation skips quantization at random (QDrop), which keeps the solution flat for the other
inputs it will see.

Everything learned is what the packed format stores: the layer's weight becomes alpha * t (the
per-group solvers reproduce t and alpha from it), steps go to the input quantizers' ``scale`` and
biases to ``bias_correction``. Uniform 2/3/4-bit weights (the baseline formats) learn their rounding
and grid scales the same way (:class:`.soft_rounding.SoftUniformWeights`), so the frontier compares
formats under one method. Weights kept at 8 bits keep their rounding; their steps and biases
still learn. Power-of-two steps stay fixed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..devices import model_device
from ..modes import eval_mode
from .batches import batch_images
from .config import ReconstructConfig
from .modules import QUANT_LAYERS, QuantConv2d
from .repair import reestimate_batchnorm
from .soft_rounding import (
    SoftTernaryWeights,
    SoftUniformWeights,
    drop_quantization,
    learned_fake_quantize,
)
from .surgery import quant_layers

CAPTURE_BATCH = 256  # images per forward pass while collecting a block's inputs and targets
CONTAINERS = (nn.Sequential, nn.ModuleList)


class _Captured(Exception):
    """Stops a forward pass once the block of interest has been seen."""


@torch.no_grad()
def reconstruct_blocks(model: nn.Module, fp32_model: nn.Module, batches: Iterable,
                       settings: ReconstructConfig, seed: int) -> nn.Module:
    """Learn ``model``'s blocks one after another against ``fp32_model`` on the images of ``batches``.

    ``model`` must be ``fp32_model`` quantized (same module names) with calibrated activations.
    The same ``seed`` and inputs give the same weights.
    """
    device = model_device(model)
    images = torch.cat([image for _ in range(settings.views) for image in batch_images(batches, model)])
    sampling = torch.Generator().manual_seed(seed)
    dropping = torch.Generator(device=device).manual_seed(seed)
    with eval_mode(model), eval_mode(fp32_model):
        blocks = reconstruction_blocks(model, images[:1])
        for name in tqdm(blocks, desc="block reconstruction", unit="block"):
            inputs = _capture(model, name, images, output=False)
            targets = _capture(fp32_model, name, images, output=True)
            with torch.enable_grad():
                _fit_block(model.get_submodule(name), inputs, targets, settings, sampling, dropping)
    if settings.bn_reestimate:
        reestimate_batchnorm(model, images.split(CAPTURE_BATCH))
    return model


def reconstruction_blocks(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of the blocks, in the order a forward pass of ``example`` reaches them.

    A block is a child of a Sequential or ModuleList (e.g. a residual block in a ResNet stage)
    that holds quantized layers, or a quantized layer outside every such child.
    """
    candidates = _blocks_under(model, "")
    order: list[str] = []
    handles = [model.get_submodule(name).register_forward_pre_hook(lambda *_, name=name: order.append(name))
               for name in candidates]
    try:
        model(example)
    finally:
        for handle in handles:
            handle.remove()
    return list(dict.fromkeys(order))


def _blocks_under(module: nn.Module, prefix: str) -> list[str]:
    names = []
    for child_name, child in module.named_children():
        name = f"{prefix}{child_name}"
        if not quant_layers(child):
            continue
        if isinstance(child, QUANT_LAYERS) or (isinstance(module, CONTAINERS) and not isinstance(child, CONTAINERS)):
            names.append(name)
        else:
            names.extend(_blocks_under(child, f"{name}."))
    return names


def _capture(model: nn.Module, name: str, images: torch.Tensor, output: bool) -> torch.Tensor:
    """The input (or output) of block ``name`` for every image, computed by ``model``."""
    block, captured = model.get_submodule(name), []

    def keep(_module, args, result=None):
        if not output and len(args) != 1:
            raise ValueError(f"block {name} takes {len(args)} inputs; reconstruction needs blocks of one tensor")
        captured.append((result if output else args[0]).detach())
        raise _Captured

    handle = block.register_forward_hook(keep) if output else block.register_forward_pre_hook(keep)
    try:
        for chunk in images.split(CAPTURE_BATCH):
            try:
                model(chunk)
            except _Captured:
                pass
    finally:
        handle.remove()
    return torch.cat(captured)


class _LayerLearner:
    """What one fake-quant layer learns, and a forward pass that uses it in place of the layer's own."""

    def __init__(self, layer: nn.Module, drop_prob: float, dropping: torch.Generator):
        self.layer, self.drop_prob, self.dropping = layer, drop_prob, dropping
        fmt, quantizer = layer.weight_format, layer.input_quantizer
        self.soft = None  # 8-bit weights keep their rounding
        if fmt.kind == "ternary":
            self.soft = SoftTernaryWeights(layer.weight, fmt.group_size, fmt.solver)
        elif fmt.kind == "uniform":
            self.soft = SoftUniformWeights(layer.weight, fmt.bits, fmt.group_size, fmt.scale_dtype, layer._grid())
        self.fixed_weight = None if self.soft else layer.quantized_weight().detach()
        self.quantizes_input = quantizer.enabled and quantizer.calibrated
        learn_step = self.quantizes_input and not quantizer.power_of_two
        self.log_step = nn.Parameter(torch.zeros((), device=layer.weight.device)) if learn_step else None
        self.bias = nn.Parameter(torch.zeros_like(layer.bias_correction))

    def code_parameters(self) -> list[nn.Parameter]:
        return [self.soft.logits] if self.soft else []

    def scale_parameters(self) -> list[nn.Parameter]:
        params = [self.bias] + ([self.log_step] if self.log_step is not None else [])
        return params + (self.soft.scale_parameters() if self.soft else [])

    def rounding_penalty(self, exponent: float) -> torch.Tensor:
        return self.soft.rounding_penalty(exponent) if self.soft else torch.zeros(())

    def _step(self) -> torch.Tensor:
        step = self.layer.input_quantizer.scale
        return step * torch.exp(self.log_step) if self.log_step is not None else step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        if self.quantizes_input:
            qmin, qmax = layer.input_quantizer.integer_range()
            x = drop_quantization(x, learned_fake_quantize(x, self._step(), qmin, qmax), self.drop_prob, self.dropping)
        weight = self.soft.weight() if self.soft else self.fixed_weight
        shift = layer.bias_correction + self.bias
        if isinstance(layer, QuantConv2d):
            return layer._conv_forward(x, weight, layer.bias) + shift.view(1, -1, 1, 1)
        return F.linear(x, weight, layer.bias) + shift

    @torch.no_grad()
    def commit(self) -> None:
        """Write the hard codes times the scales, the step and the bias into the layer."""
        if self.soft:
            self.soft.commit(self.layer)
        if self.log_step is not None:
            self.layer.input_quantizer.scale.copy_(self._step())
        self.layer.bias_correction += self.bias


def _rounding_exponent(iteration: int, settings: ReconstructConfig) -> float | None:
    """AdaRound's schedule: no penalty during warm-up, then the exponent falls linearly; None: off."""
    start = int(settings.warmup * settings.iterations)
    if iteration < start:
        return None
    progress = (iteration - start) / max(settings.iterations - start, 1)
    return settings.beta_end + (settings.beta_start - settings.beta_end) * (1 - progress)


def _fit_block(block: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, settings: ReconstructConfig,
               sampling: torch.Generator, dropping: torch.Generator) -> None:
    layers = [layer for _, layer in quant_layers(block)]
    learners = [_LayerLearner(layer, settings.drop_prob, dropping) for layer in layers]
    optimizer = torch.optim.Adam([
        {"params": [p for learner in learners for p in learner.code_parameters()], "lr": settings.lr},
        {"params": [p for learner in learners for p in learner.scale_parameters()], "lr": settings.scale_lr},
    ])
    def cosine(iteration: int) -> float:
        return 0.5 * (1 + math.cos(math.pi * iteration / settings.iterations))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, [lambda _: 1.0, cosine])
    for layer, learner in zip(layers, learners):
        layer.forward = learner.forward  # an instance attribute: Module.__call__ runs it instead of the class's
    try:
        for iteration in range(settings.iterations):
            pick = torch.randint(len(inputs), (settings.batch_size,), generator=sampling).to(inputs.device)
            # summed over channels, averaged over images and positions (BRECQ's reconstruction loss)
            loss = (block(inputs[pick]) - targets[pick]).square().sum(dim=1).mean()
            exponent = _rounding_exponent(iteration, settings)
            if exponent is not None:
                loss = loss + settings.round_weight * sum(learner.rounding_penalty(exponent) for learner in learners)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    finally:
        for layer in layers:
            del layer.forward
    for learner in learners:
        learner.commit()
