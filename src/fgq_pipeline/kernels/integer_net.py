"""Whole-network integer inference from a packed file, numpy and Numba only.

Activations run NHWC in float32 between layers. At each quantized layer the input is rounded to
that layer's integer grid (round half to even, saturate: the fake-quant model's rule), multiplied
against the packed weights with an exact integer sum per group, and scaled back to float32 (a
ternary layer with int8 scales: one exact sum per filter of the int8 weights t * q, see
:func:`.packed.as_int8_layer`). Where the tiled kernels run a conv, its residual add and ReLU are
applied as its outputs are stored (:mod:`.fusion`), and outputs that only convs read leave it as
their integer input (the same rounding, done in the store); fp32 values remain where an add, a
pooling or the logits need them. Graphs the compiled pass takes run as one Numba function per input
shape (:mod:`.compiled_pass`), the rest node by node; both compute the same values.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from . import graph_ops as ops
from .compiled_pass import CompiledPass, compile_pass
from .fusion import fuse_epilogues
from .graph import validate_graph
from .im2col import im2col
from .int8_gemm import int8_gemm
from .packed import PackedLayer, as_int8_layer, with_quad_channels
from .packed_file import PackedModel, load_packed
from .simd import FAST_DOT4
from .ternary_gemm import ternary_gemm
from .tiled_gemm import QUAD, TILE, TiledLayer


class IntegerNet:
    """Callable on float32 NCHW images; returns float32 logits [B, classes]."""

    # True: every layer's float input goes through run_layer, node by node: no integer hand-over
    # between convs (_integer_handoffs) and no compiled pass (:mod:`.compiled_pass`), for subclasses
    # that watch those inputs. Both give the same values.
    node_by_node = False
    PASSES_KEPT = 2  # compiled passes cached, one per input shape (each holds its buffers): a batch and a remainder

    def __init__(self, model: PackedModel):
        self.layers = model.layers
        self.graph = validate_graph(model.graph, model.layers)
        self.plan = fuse_epilogues(self.graph)  # the graph as it runs: adds and ReLUs in the conv epilogues
        self._release = _last_reads(self.plan)
        quads = {name: with_quad_channels(layer) for name, layer in self.layers.items()}  # RGB stems: 4 channels
        self._tiled = {  # layers whose groups are whole quads run on the tiled kernels, re-laid out once here
            name: TiledLayer.from_packed(layer) for name, layer in quads.items()
            if FAST_DOT4 and TiledLayer.supports(layer)  # with plain-IR dot4 about 10x slower (kernels README)
        }
        self._general = {  # the rest, int8-scale ternary layers as the int8 layers they define
            name: as_int8_layer(layer) for name, layer in self.layers.items() if name not in self._tiled
        }
        self._scales = {name: layer.fp32_scales for name, layer in self._general.items()}  # decoded once
        self._handoffs = {} if self.node_by_node else self._integer_handoffs()
        self._passes: dict[tuple[int, ...], CompiledPass | None] = {}

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
        compiled = self._compiled_pass(images.shape)
        if compiled is not None:
            return compiled(images)
        values, integers = {}, {}  # fp32 NHWC values (None where no reader needs them); handed-over integers
        for index, node in enumerate(self.plan):
            name = node["output"]
            if node["op"] == "input":
                values[name] = np.ascontiguousarray(images.transpose(0, 2, 3, 1))
            elif node["op"] == "conv" and (name in self._handoffs or node["inputs"][0] in integers):
                values[name], handed = self._conv_with_integers(node, values, integers)
                if handed is not None:
                    integers[name] = handed
            else:
                values[name] = self.run_node(node, [values[value] for value in node["inputs"]])
            for value in self._release[index]:  # a value is dropped once its last reader has run
                del values[value]
                integers.pop(value, None)
        return values[self.plan[-1]["output"]]

    def _compiled_pass(self, shape: tuple[int, ...]) -> CompiledPass | None:
        if self.node_by_node:
            return None
        if shape not in self._passes:
            if len(self._passes) == self.PASSES_KEPT:
                del self._passes[next(iter(self._passes))]
            self._passes[shape] = compile_pass(self.plan, self.layers, self._tiled, self._handoffs, self._release,
                                               shape)
        return self._passes[shape]

    def run_node(self, node: dict, inputs: list[np.ndarray]) -> np.ndarray:
        op, x = node["op"], inputs[0]
        if op in ("conv", "linear"):
            residual = inputs[1] if node.get("residual") else None
            return self.run_layer(self.layers[node["layer"]], x, residual, node.get("relu", False))
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

    def run_layer(self, layer: PackedLayer, x: np.ndarray, residual: np.ndarray | None = None,
                  relu: bool = False) -> np.ndarray:
        """Quantize ``x`` (NHWC for a conv, [B, C] for a linear) to ``layer``'s input grid and apply it;
        then add ``residual`` and apply ReLU if asked (the fused epilogue, :mod:`.fusion`)."""
        expected_dims = 4 if layer.kind == "conv" else 2
        if x.ndim != expected_dims or x.shape[-1] != layer.in_channels:
            raise ValueError(f"layer {layer.name!r} expects {layer.in_channels} input channels in a "
                             f"{expected_dims}-d input, got shape {x.shape}")
        tiled = self._tiled.get(layer.name)
        if self._runs_in_place(layer.name):  # no im2col
            padded = layer.activation.quantize(x, layer.padding, tiled.in_channels)
            return tiled.conv(padded, layer.kernel_size, layer.stride, layer.dilation, layer.activation.scale,
                              residual, relu)
        if layer.kind == "linear":
            out = self._gemm(layer, layer.activation.quantize(x))
        else:
            columns, (out_height, out_width) = im2col(layer.activation.quantize(x), layer.kernel_size, layer.stride,
                                                       layer.padding, layer.dilation)
            out = self._gemm(layer, columns).reshape(x.shape[0], out_height, out_width, layer.out_channels)
        if residual is not None:
            out = ops.add(out, residual)
        return ops.relu(out) if relu else out

    def _conv_with_integers(self, node: dict, values: dict, integers: dict) -> tuple[np.ndarray | None,
                                                                                     np.ndarray | None]:
        """A conv read in place that takes its input as a producer handed it over and/or hands its
        outputs over to the convs that read them: (fp32 outputs or None, their integers or None)."""
        layer = self.layers[node["layer"]]
        tiled, source = self._tiled[layer.name], node["inputs"][0]
        padded = integers.get(source)
        if padded is None:
            padded = layer.activation.quantize(values[source], layer.padding, tiled.in_channels)
        residual = values[node["inputs"][1]] if node.get("residual") else None
        arguments = (padded, layer.kernel_size, layer.stride, layer.dilation, layer.activation.scale, residual,
                     node.get("relu", False))
        if node["output"] not in self._handoffs:
            return tiled.conv(*arguments), None
        consumer, keep_floats = self._handoffs[node["output"]]
        return tiled.conv_requantized(*arguments, consumer.activation, consumer.padding, keep_floats)

    def _integer_handoffs(self) -> dict[str, tuple[PackedLayer, bool]]:
        """Values a conv read in place can hand over as integers: every conv reading them (as its input)
        is read in place with one unsigned input format and padding, and the producer's outputs fill
        whole tiles. Per value: one of those convs (its format) and whether fp32 values are still
        needed (a residual add, a pooling, ... reads them too)."""
        readers = defaultdict(list)
        for node in self.plan:
            for slot, name in enumerate(node["inputs"]):
                readers[name].append((node, slot))
        handoffs = {}
        for node in self.plan:
            if node["op"] != "conv" or not self._runs_in_place(node["layer"]) \
                    or self.layers[node["layer"]].out_channels % TILE:
                continue
            consumers = [self.layers[reader["layer"]] for reader, slot in readers[node["output"]]
                         if reader["op"] == "conv" and slot == 0 and self._runs_in_place(reader["layer"])
                         and self._tiled[reader["layer"]].in_channels == self.layers[reader["layer"]].in_channels]
            if len({(layer.activation, tuple(layer.padding)) for layer in consumers}) != 1 \
                    or consumers[0].activation.signed:
                continue
            handoffs[node["output"]] = (consumers[0], len(consumers) < len(readers[node["output"]]))
        return handoffs

    def _runs_in_place(self, name: str) -> bool:
        tiled = self._tiled.get(name)
        return self.layers[name].kind == "conv" and tiled is not None and tiled.in_channels % QUAD == 0

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
