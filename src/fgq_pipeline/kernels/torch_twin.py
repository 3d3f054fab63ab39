"""The packed model's arithmetic in torch: what :class:`.IntegerNet` computes, bit for bit, on any device.

A calibrated fake-quant model is traced and packed exactly as :func:`.export_packed` packs it
(BatchNorm folded into the group scales, scales rounded to the file's dtype); each quantized layer
then feeds integer activations (the fake-quant rounding) through exact integer group sums and adds
the scaled sums in the integer path's float order (kernels README, "Float order"); the operations
between layers use the sums and orders of :mod:`.graph_ops`. Every reported accuracy of a model the
integer path can run is this twin's, so the numbers in the reports are the ones the verify stage
reproduces with the Numba kernels, image for image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .codes import unpack_codes
from .fx_trace import trace_graph
from .graph import validate_graph
from .layer_packing import pack_quant_layer
from .packed import PackedLayer
from .packed_file import PackedModel
from .scales import validate_scale_dtype

FP32_EXACT_INTEGERS = 2**24  # integer sums below this are exact in fp32, whatever order they are added in


def torch_twin(model: nn.Module, scale_dtype: str = "fp32") -> "TorchTwin":
    """The twin of ``model`` (after quantize_model and calibration) with scales stored as ``scale_dtype``.

    ValueError, naming the node or layer, where the integer path cannot run the model (see
    :func:`.export_packed`).
    """
    validate_scale_dtype(scale_dtype)
    nodes, traced = trace_graph(model)
    with torch.no_grad():
        layers = {layer.name: pack_quant_layer(layer.name, layer.module, layer.norm, scale_dtype) for layer in traced}
    validate_graph(nodes, layers)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return TorchTwin(PackedModel(layers=layers, graph=nodes)).to(device)


class TorchTwin(nn.Module):
    """Callable on float32 NCHW images; returns the float32 logits :class:`.IntegerNet` returns."""

    def __init__(self, model: PackedModel):
        super().__init__()
        self.graph = validate_graph(model.graph, model.layers)
        self.layers = nn.ModuleDict({_key(name): TwinLayer(layer) for name, layer in model.layers.items()})

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        values = {}
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
    """One packed layer: dense integer weights [K, positions, C], fp32 scales [K, groups], fp32 bias."""

    def __init__(self, layer: PackedLayer):
        super().__init__()
        self.kind, self.ternary = layer.kind, layer.weight_format == "ternary"
        self.kernel_size, self.stride = layer.kernel_size, layer.stride or (1, 1)
        self.padding, self.dilation = layer.padding or (0, 0), layer.dilation or (1, 1)
        channels = layer.in_channels
        self.group_size = layer.group_size if self.ternary else channels * layer.kernel_positions
        self.qmin, self.qmax = layer.activation.integer_range
        dense = _dense_weights(layer).reshape(layer.out_channels, layer.kernel_positions, channels)
        # Sums that could pass 2^24 are formed in float64 (exact), then rounded once, as int32 -> fp32 is.
        bound = self.group_size * int(abs(dense).max()) * layer.activation.max_magnitude
        self.sum_dtype = torch.float32 if bound < FP32_EXACT_INTEGERS else torch.float64
        self.register_buffer("weights", torch.from_numpy(dense).to(self.sum_dtype))
        self.register_buffer("scales", torch.from_numpy(layer.fp32_scales.copy()))
        self.register_buffer("bias", torch.from_numpy(layer.bias.copy()))
        self.register_buffer("act_scale", torch.tensor(layer.activation.scale, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        integers = torch.clamp(torch.round(x / self.act_scale), self.qmin, self.qmax).to(self.sum_dtype)
        if self.kind == "linear":
            return self._affine(self._group_sums(integers, 0), self.scales.shape[1], lambda index: index)
        if not self.ternary:  # one group spanning the filter: the whole convolution is the group sum
            weight = self.weights.permute(0, 2, 1).reshape(self.weights.shape[0], -1, *self.kernel_size)
            sums = F.conv2d(integers, weight, stride=self.stride, padding=self.padding, dilation=self.dilation)
            return self._epilogue(sums.float() * self.scales[:, 0].view(1, -1, 1, 1))
        padded = F.pad(integers, (self.padding[1], self.padding[1], self.padding[0], self.padding[0]))
        out_h = (padded.shape[2] - self.dilation[0] * (self.kernel_size[0] - 1) - 1) // self.stride[0] + 1
        out_w = (padded.shape[3] - self.dilation[1] * (self.kernel_size[1] - 1) - 1) // self.stride[1] + 1
        acc, groups = None, -(-self.weights.shape[2] // self.group_size)
        for position in range(self.weights.shape[1]):
            r, s = divmod(position, self.kernel_size[1])
            rows = slice(r * self.dilation[0], r * self.dilation[0] + (out_h - 1) * self.stride[0] + 1, self.stride[0])
            cols = slice(s * self.dilation[1], s * self.dilation[1] + (out_w - 1) * self.stride[1] + 1, self.stride[1])
            sums = self._group_sums(padded[:, :, rows, cols], position)  # [G, B, K, OH, OW]
            for g in range(groups):
                term = sums[g].float() * self.scales[:, position * groups + g].view(1, -1, 1, 1)
                acc = term if acc is None else acc + term
        return self._epilogue(acc)

    def _group_sums(self, integers: torch.Tensor, position: int) -> torch.Tensor:
        """Exact sums of each group of ``group_size`` input channels at one kernel position: [G, B, K, ...]."""
        channels, size = self.weights.shape[2], min(self.group_size, self.weights.shape[2])
        groups = -(-channels // size)
        weights = F.pad(self.weights[:, position], (0, groups * size - channels)).view(-1, groups, size)
        x = F.pad(integers.movedim(1, -1), (0, groups * size - channels))
        x = x.reshape(*x.shape[:-1], groups, size)
        sums = torch.einsum("...gn,kgn->g...k", x, weights)
        return sums.movedim(-1, 2) if sums.dim() == 5 else sums  # conv: [G, B, OH, OW, K] -> [G, B, K, OH, OW]

    def _affine(self, sums: torch.Tensor, groups: int, scale_index) -> torch.Tensor:
        acc = None
        for g in range(groups):
            term = sums[g].float() * self.scales[:, scale_index(g)]
            acc = term if acc is None else acc + term
        return self._epilogue(acc)

    def _epilogue(self, acc: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, 1, 1) if acc.dim() == 4 else (1, -1)
        return acc * self.act_scale + self.bias.view(shape)


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
