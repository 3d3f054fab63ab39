"""The packed model's arithmetic in torch: what :class:`.IntegerNet` computes, bit for bit, on any device.

A calibrated fake-quant model is traced and packed exactly as :func:`.export_packed` packs it
(BatchNorm folded into the group scales, scales rounded to the file's dtype); each quantized layer
then feeds integer activations (the fake-quant rounding) through exact integer group sums and adds
the scaled sums in the integer path's float order (kernels README, "Float order"); the operations
between layers use the sums and orders of :mod:`.graph_ops`. Reported accuracies are computed in
this arithmetic (:func:`exact_model`: the Numba path on the CPU, this twin on an accelerator), and
the verify stage runs both over whole test sets to show that they agree bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from ..devices import model_device
from .codes import unpack_codes
from .export import pack_model
from .graph import validate_graph
from .integer_net import IntegerNet
from .packed import PackedLayer, as_int8_layer
from .packed_file import PackedModel

FP32_EXACT_INTEGERS = 2**24  # integer sums below this are exact in fp32, whatever order they are added in


def torch_twin(model: nn.Module, scale_dtype: str = "fp32") -> TorchTwin:
    """The twin of ``model`` (after quantize_model and calibration) with scales stored as ``scale_dtype``,
    on the model's device. ValueError, naming the node or layer, where the integer path cannot run
    the model (see :func:`.export_packed`)."""
    return TorchTwin(pack_model(model, scale_dtype)).to(model_device(model))


def exact_model(model: nn.Module, scale_dtype: str = "fp32") -> nn.Module:
    """``model``'s integer-exact arithmetic as a torch module: on the CPU the Numba integer path
    itself (the fastest exact evaluator there), elsewhere the torch twin. Both give the same bits."""
    packed = pack_model(model, scale_dtype)
    device = model_device(model)
    return IntegerNetModule(IntegerNet(packed)) if device.type == "cpu" else TorchTwin(packed).to(device)


class IntegerNetModule(nn.Module):
    """:class:`.IntegerNet` behind a torch module's call: CPU tensors in, CPU logits out."""

    def __init__(self, net: IntegerNet):
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.net(images.detach().cpu().numpy()))


class TorchTwin(nn.Module):
    """Callable on float32 NCHW images; returns the float32 logits :class:`.IntegerNet` returns."""

    def __init__(self, model: PackedModel):
        super().__init__()
        self.graph = validate_graph(model.graph, model.layers)
        self.layers = nn.ModuleDict({_key(name): TwinLayer(layer) for name, layer in model.layers.items()})

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        values = {}
        with ieee_float32():
            for node in self.graph:
                inputs = [values[name] for name in node["inputs"]]
                values[node["output"]] = images.float() if node["op"] == "input" else self._run(node, inputs)
        return values[self.graph[-1]["output"]]

    def _run(self, node: dict, inputs: list[torch.Tensor]) -> torch.Tensor:
        op, x = node["op"], inputs[0]
        if op in ("conv", "linear"):
            return self.layers[_key(node["layer"])](x)
        if op == "relu":
            return torch.clamp_min(x, 0.0)
        if op == "maxpool":
            return F.max_pool2d(x, node["kernel"], node["stride"], node["padding"])
        if op == "avgpool":
            return avg_pool(x, node["kernel"], node["stride"], node["padding"], node["count_include_pad"])
        if op == "adaptive_avgpool":
            return adaptive_avg_pool(x, node["output_size"])
        if op == "flatten":
            return torch.flatten(x, 1)
        if op == "add":
            return x + inputs[1]
        x = x[:, :, :: node["subsample"], :: node["subsample"]]
        return F.pad(x, (0, 0, 0, 0, node["pad_channels"], node["pad_channels"]))


class TwinLayer(nn.Module):
    """One packed layer: integer weights [K, positions, groups, N] (input channels zero-padded to whole
    groups), fp32 scales [K, positions x groups], fp32 bias."""

    def __init__(self, layer: PackedLayer):
        super().__init__()
        layer = as_int8_layer(layer)  # int8 scales: the int8 weights t * q, one fp32 scale per filter
        self.kind, self.ternary = layer.kind, layer.weight_format == "ternary"
        self.kernel_size, self.stride = layer.kernel_size, layer.stride or (1, 1)
        self.padding, self.dilation = layer.padding or (0, 0), layer.dilation or (1, 1)
        channels = layer.in_channels
        group_size = min(layer.group_size, channels) if self.ternary else channels
        groups = -(-channels // group_size)
        self.channel_pad = groups * group_size - channels
        self.qmin, self.qmax = layer.activation.integer_range
        dense = _dense_weights(layer).reshape(layer.out_channels, layer.kernel_positions, channels)
        # Sums that could pass 2^24 are formed in float64 (exact), then rounded once, as int32 -> fp32 is.
        reduction = group_size if self.ternary else channels * layer.kernel_positions
        bound = reduction * int(abs(dense).max()) * layer.activation.max_magnitude
        self.sum_dtype = torch.float32 if bound < FP32_EXACT_INTEGERS else torch.float64
        weights = F.pad(torch.from_numpy(dense).to(self.sum_dtype), (0, self.channel_pad))
        self.register_buffer("weights", weights.view(*dense.shape[:2], groups, group_size))
        self.register_buffer("scales", torch.from_numpy(layer.fp32_scales.copy()))
        self.register_buffer("bias", torch.from_numpy(layer.bias.copy()))
        self.register_buffer("act_scale", torch.tensor(layer.activation.scale, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        integers = torch.clamp(torch.round(x / self.act_scale), self.qmin, self.qmax).to(self.sum_dtype)
        if self.kind == "linear":
            return self._epilogue(self._accumulate(self._group_sums(F.pad(integers, (0, self.channel_pad)), 0), 0))
        if not self.ternary:  # one group spanning the filter: the whole convolution is the group sum
            weight = self.weights[:, :, 0].permute(0, 2, 1).reshape(self.weights.shape[0], -1, *self.kernel_size)
            sums = F.conv2d(integers, weight, stride=self.stride, padding=self.padding, dilation=self.dilation)
            return self._epilogue(self._accumulate(sums.permute(0, 2, 3, 1).unsqueeze(0), 0))
        # channels last from here: a group's sums and scales run along the contiguous output channels
        (pad_h, pad_w), (dil_h, dil_w), (step_h, step_w) = self.padding, self.dilation, self.stride
        padded = F.pad(integers.permute(0, 2, 3, 1), (0, self.channel_pad, pad_w, pad_w, pad_h, pad_h))
        out_h = (padded.shape[1] - dil_h * (self.kernel_size[0] - 1) - 1) // step_h + 1
        out_w = (padded.shape[2] - dil_w * (self.kernel_size[1] - 1) - 1) // step_w + 1
        acc = None
        for position in range(self.weights.shape[1]):
            r, s = divmod(position, self.kernel_size[1])
            window = padded[:, r * dil_h: r * dil_h + (out_h - 1) * step_h + 1: step_h,
                            s * dil_w: s * dil_w + (out_w - 1) * step_w + 1: step_w]
            acc = self._accumulate(self._group_sums(window, position), position, acc)
        return self._epilogue(acc)

    def _group_sums(self, integers: torch.Tensor, position: int) -> torch.Tensor:
        """Exact sums of each group of input channels (the last dim, padded to whole groups) at one
        kernel position: [G, ..., K]."""
        groups, size = self.weights.shape[2:]
        grouped = integers.reshape(*integers.shape[:-1], groups, size)
        return torch.einsum("...gn,kgn->g...k", grouped, self.weights[:, position])

    def _accumulate(self, sums: torch.Tensor, position: int, acc: torch.Tensor | None = None) -> torch.Tensor:
        """acc + each group's fl(S_g * alpha_g), one fp32 addition per group in the kernels' order."""
        groups = sums.shape[0]
        scales = self.scales[:, position * groups: (position + 1) * groups].t()
        terms = sums.float() * scales.reshape(groups, *([1] * (sums.dim() - 2)), -1)
        for term in terms:
            acc = term.clone() if acc is None else acc.add_(term)
        return acc

    def _epilogue(self, acc: torch.Tensor) -> torch.Tensor:
        """fl(fl(acc * s_x) + bias), back to NCHW for a conv (channels-last memory)."""
        out = acc * self.act_scale + self.bias
        return out.permute(0, 3, 1, 2) if out.dim() == 4 else out


def avg_pool(x: torch.Tensor, kernel: list[int], stride: list[int], padding: list[int],
             count_include_pad: bool) -> torch.Tensor:
    """The window sum in row-major order, then one division: :func:`.graph_ops.avg_pool`'s order."""
    padded = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    sums = _window_sum(padded, kernel, stride)
    if count_include_pad or not any(padding):
        return sums / torch.tensor(float(kernel[0] * kernel[1]), dtype=torch.float32, device=x.device)
    ones = F.pad(torch.ones((1, 1, *x.shape[2:]), dtype=torch.float32, device=x.device),
                 (padding[1], padding[1], padding[0], padding[0]))
    return sums / _window_sum(ones, kernel, stride)


def adaptive_avg_pool(x: torch.Tensor, output_size: list[int]) -> torch.Tensor:
    """Output cell i averages input rows floor(i H / OH) .. ceil((i + 1) H / OH) - 1, summed in row-major order."""
    height, width = x.shape[2:]
    out_h, out_w = output_size
    rows = [(i * height // out_h, -(-(i + 1) * height // out_h)) for i in range(out_h)]
    cols = [(j * width // out_w, -(-(j + 1) * width // out_w)) for j in range(out_w)]
    cells = [[_mean(x[:, :, r0:r1, c0:c1]) for c0, c1 in cols] for r0, r1 in rows]
    return torch.stack([torch.stack(row, dim=-1) for row in cells], dim=-2)


def _mean(window: torch.Tensor) -> torch.Tensor:
    count = window.shape[2] * window.shape[3]
    return _window_sum(window, list(window.shape[2:]), [1, 1])[:, :, 0, 0] / torch.tensor(
        float(count), dtype=torch.float32, device=window.device)


def _window_sum(x: torch.Tensor, kernel: list[int], stride: list[int]) -> torch.Tensor:
    out_h = (x.shape[2] - kernel[0]) // stride[0] + 1
    out_w = (x.shape[3] - kernel[1]) // stride[1] + 1
    total = None
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            cell = x[:, :, i: i + (out_h - 1) * stride[0] + 1: stride[0], j: j + (out_w - 1) * stride[1] + 1: stride[1]]
            total = cell if total is None else total + cell
    return total


def _dense_weights(layer: PackedLayer):
    """int8 [K, L]: the ternary codes unpacked to -1/0/+1, or the int8 weights as stored."""
    return unpack_codes(layer.weights, layer.reduction_length) if layer.weight_format == "ternary" else layer.weights


def _key(name: str) -> str:
    return name.replace(".", "/")  # ModuleDict keys may not contain dots


@contextmanager
def ieee_float32() -> Iterator[None]:
    """Full fp32 in cuBLAS and cuDNN inside the block: their TF32 mode (cuDNN's default for
    convolutions) would round the integer operands of a group sum to 10-bit mantissas."""
    settings = (torch.backends.cuda.matmul, torch.backends.cudnn.conv)
    saved = [setting.fp32_precision for setting in settings]
    for setting in settings:
        setting.fp32_precision = "ieee"
    try:
        yield
    finally:
        for setting, precision in zip(settings, saved):
            setting.fp32_precision = precision
