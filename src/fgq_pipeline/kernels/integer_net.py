"""Whole-network integer inference from a packed file, numpy and Numba only.

Activations run NHWC in float32 between layers. At each quantized layer the input is rounded to
that layer's integer grid (round half to even, saturate: the fake-quant model's rule), multiplied
against the packed weights with an exact integer sum per group, and scaled back to float32 (a
ternary layer with int8 scales: one exact sum per filter of the int8 weights t * q, see
:func:`.packed.as_int8_layer`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import graph_ops as ops
from .graph import validate_graph
from .im2col import im2col
from .int8_gemm import int8_gemm
from .packed import PackedLayer, as_int8_layer
from .packed_file import PackedModel, load_packed
from .simd import HAS_VNNI
from .ternary_gemm import ternary_gemm
from .tiled_gemm import TiledLayer


class IntegerNet:
    """Callable on float32 NCHW images; returns float32 logits [B, classes]."""

    def __init__(self, model: PackedModel):
        self.layers = model.layers
        self.graph = validate_graph(model.graph, model.layers)
        self._release = _last_reads(self.graph)
        self._tiled = {  # layers whose groups are whole quads run on the tiled kernels, re-laid out once here
            name: TiledLayer.from_packed(layer) for name, layer in self.layers.items()
            if HAS_VNNI and TiledLayer.supports(layer)  # without VNNI they are about 10x slower (kernels README)
        }
        self._general = {  # the rest, int8-scale ternary layers as the int8 layers they define
            name: as_int8_layer(layer) for name, layer in self.layers.items() if name not in self._tiled
        }
        self._scales = {name: layer.fp32_scales for name, layer in self._general.items()}  # decoded once

    @classmethod
    def load(cls, path: str | Path) -> "IntegerNet":
        model = load_packed(path)
        try:
            return cls(model)
        except ValueError as error:
            raise ValueError(f"packed model {path}: {error}") from None

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 4:
            raise ValueError(f"images must be a float32 batch [B, C, H, W], got shape {images.shape}")
        values = {}
        for index, node in enumerate(self.graph):
            if node["op"] == "input":
                out = np.ascontiguousarray(images.transpose(0, 2, 3, 1))
            else:
                out = self.run_node(node, [values[name] for name in node["inputs"]])
            values[node["output"]] = out
            for name in self._release[index]:  # a value is dropped once its last reader has run
                del values[name]
        return values[self.graph[-1]["output"]]

    def run_node(self, node: dict, inputs: list[np.ndarray]) -> np.ndarray:
        op, x = node["op"], inputs[0]
        if op in ("conv", "linear"):
            return self.run_layer(self.layers[node["layer"]], x)
        if op == "relu":
            return ops.relu(x)
        if op == "maxpool":
            return ops.max_pool(x, node["kernel"], node["stride"], node["padding"])
        if op == "avgpool":
            return ops.avg_pool(x, node["kernel"], node["stride"], node["padding"], node["count_include_pad"])
        if op == "adaptive_avgpool":
            return ops.adaptive_avg_pool(x, node["output_size"])
        if op == "flatten":
            return ops.flatten(x)
        if op == "add":
            return ops.add(x, inputs[1])
        return ops.subsample_pad(x, node["subsample"], node["pad_channels"])

    def run_layer(self, layer: PackedLayer, x: np.ndarray) -> np.ndarray:
        """Quantize ``x`` (NHWC for a conv, [B, C] for a linear) to ``layer``'s input grid and apply it."""
        expected_dims = 4 if layer.kind == "conv" else 2
        if x.ndim != expected_dims or x.shape[-1] != layer.in_channels:
            raise ValueError(f"layer {layer.name!r} expects {layer.in_channels} input channels in a "
                             f"{expected_dims}-d input, got shape {x.shape}")
        integers = layer.activation.quantize(x)
        if layer.kind == "linear":
            return self._gemm(layer, integers)
        columns, (out_height, out_width) = im2col(integers, layer.kernel_size, layer.stride, layer.padding,
                                                   layer.dilation)
        return self._gemm(layer, columns).reshape(x.shape[0], out_height, out_width, layer.out_channels)

    def _gemm(self, layer: PackedLayer, columns: np.ndarray) -> np.ndarray:
        act_scale = layer.activation.scale
        if layer.name in self._tiled:
            return self._tiled[layer.name].gemm(columns, act_scale)
        layer, scales = self._general[layer.name], self._scales[layer.name]
        if layer.weight_format == "int8":
            return int8_gemm(columns, layer.weights, scales[:, 0], layer.bias, act_scale)
        return ternary_gemm(columns, layer.weights, scales, layer.bias, act_scale, layer.in_channels, layer.group_size)


def _last_reads(graph: list[dict]) -> list[list[str]]:
    """For each node, the values it is the last reader of."""
    last = {name: index for index, node in enumerate(graph) for name in node["inputs"]}
    release = [[] for _ in graph]
    for name, index in last.items():
        release[index].append(name)
    return release
