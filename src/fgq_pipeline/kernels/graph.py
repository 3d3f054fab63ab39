"""The network graph of a packed file (since format version 2): a DAG of named float32 values.

A graph is a list of nodes in an order that runs (every input defined by an earlier node):

    {"op": "conv", "layer": "layer1.0.conv1", "inputs": ["relu"], "output": "layer1_0_bn1"}

The first node is the only ``input`` (the images, NHWC); the last node's output is the network's
output and the only value nothing reads. Quantized layers are ``conv`` / ``linear`` nodes naming a
packed layer (each used exactly once); everything else runs in float32 between them, exactly where
the fake-quant model computes in float. :func:`validate_graph` checks a loaded graph before
anything runs, including channel counts and (where the input size does not matter) spatial sizes,
and names the offending node.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..checks import is_int
from .im2col import conv_output_size
from .packed import PackedLayer

WINDOW = ("kernel", "stride", "padding")
NODE_FIELDS = {  # op -> (number of inputs, fields besides op / inputs / output)
    "input": (0, ()),
    "conv": (1, ("layer",)),
    "linear": (1, ("layer",)),
    "relu": (1, ()),
    "maxpool": (1, WINDOW),
    "avgpool": (1, (*WINDOW, "count_include_pad")),
    "adaptive_avgpool": (1, ("output_size",)),
    "flatten": (1, ()),
    "add": (2, ()),
    "subsample_pad": (1, ("subsample", "pad_channels")),  # option-A shortcut: x[:, ::s, ::s], zero channels
}


@dataclass(frozen=True)
class ValueShape:
    """What is known of a value before any image is seen: rank (4: NHWC, 2: [B, features]), channels
    (or features), spatial size; None where it depends on the input size."""

    rank: int
    channels: int | None = None
    spatial: tuple[int, int] | None = None


def validate_graph(graph: object, layers: dict[str, PackedLayer]) -> list[dict]:
    """Raise ValueError naming the first node that is malformed, reads an undefined value, uses a layer
    twice, or cannot fit its input; also on layers no node uses and values nothing reads."""
    if not isinstance(graph, list) or not graph:
        raise ValueError("the file holds no network graph (export it with export_packed)")
    shapes: dict[str, ValueShape] = {}
    defined_at = {node["output"]: i for i, node in enumerate(graph)
                  if isinstance(node, dict) and isinstance(node.get("output"), str)}
    used_layers: set[str] = set()
    read: set[str] = set()
    for index, node in enumerate(graph):
        where = f"graph node {index} ({_label(node)})"
        try:
            _check_fields(node, index)
            for name in node["inputs"]:
                if name not in shapes:
                    later = defined_at.get(name, -1) >= index
                    raise ValueError(f"reads {name!r} " + ("before it is defined (nodes must run in order; a cycle "
                                                           "cannot)" if later else "which no node defines"))
            if node["output"] in shapes:
                raise ValueError(f"defines {node['output']!r} a second time")
            if "layer" in node:
                _check_layer_use(node, layers, used_layers)
            shapes[node["output"]] = infer_shape(node, [shapes[name] for name in node["inputs"]], layers)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        read.update(node["inputs"])
    unused_layers = sorted(set(layers) - used_layers)
    if unused_layers:
        raise ValueError(f"no graph node uses the layers {unused_layers}")
    unread = [node["output"] for node in graph[:-1] if node["output"] not in read]
    if unread or graph[-1]["output"] in read:
        raise ValueError(f"every value but the last node's output (the network's) must be read; unread: {unread}")
    return graph


def _check_fields(node: object, index: int) -> None:
    if not isinstance(node, dict) or not isinstance(node.get("op"), str) or node["op"] not in NODE_FIELDS:
        raise ValueError(f"op must be one of {sorted(NODE_FIELDS)}")
    arity, fields = NODE_FIELDS[node["op"]]
    if set(node) != {"op", "inputs", "output", *fields}:
        raise ValueError(f"fields must be op, inputs, output and {list(fields)}, got {sorted(node)}")
    if not isinstance(node["output"], str) or not node["output"]:
        raise ValueError("output must be a non-empty value name")
    inputs = node["inputs"]
    if not isinstance(inputs, list) or len(inputs) != arity or not all(isinstance(n, str) for n in inputs):
        raise ValueError(f"inputs must be a list of {arity} value names, got {inputs!r}")
    if (node["op"] == "input") != (index == 0):
        raise ValueError("the first node, and only it, must be the input")
    checks = {"kernel": _pair_at_least(1), "stride": _pair_at_least(1), "padding": _pair_at_least(0),
              "output_size": _pair_at_least(1), "subsample": _count_at_least(1), "pad_channels": _count_at_least(0),
              "count_include_pad": lambda v: isinstance(v, bool), "layer": lambda v: isinstance(v, str)}
    for field in fields:
        if not checks[field](node[field]):
            raise ValueError(f"{field} {node[field]!r} is out of range")
    if node["op"] in ("maxpool", "avgpool") and any(2 * p > k for p, k in zip(node["padding"], node["kernel"])):
        raise ValueError(f"padding {node['padding']} is more than half the kernel {node['kernel']}")


def _check_layer_use(node: dict, layers: dict[str, PackedLayer], used: set[str]) -> None:
    name = node["layer"]
    if name not in layers:
        raise ValueError(f"no layer {name!r} in the file")
    if name in used:
        raise ValueError(f"layer {name!r} is used a second time")
    if layers[name].kind != node["op"]:
        raise ValueError(f"layer {name!r} is a {layers[name].kind} layer")
    used.add(name)


def infer_shape(node: dict, inputs: list[ValueShape], layers: dict[str, PackedLayer]) -> ValueShape:
    """The output shape of ``node`` so far as it is known; ValueError where the input cannot fit."""
    op = node["op"]
    if op == "input":
        return ValueShape(4)
    x = inputs[0]
    if op == "add":
        return _join(*inputs)
    if op in ("relu",):
        return x
    if op == "linear":
        _expect(x, 2, layers[node["layer"]].in_channels)
        return ValueShape(2, layers[node["layer"]].out_channels)
    if op == "flatten":
        if x.rank == 2:
            return x
        known = x.channels is not None and x.spatial is not None
        return ValueShape(2, x.channels * x.spatial[0] * x.spatial[1] if known else None)
    if op == "conv":
        layer = layers[node["layer"]]
        _expect(x, 4, layer.in_channels)
        return ValueShape(4, layer.out_channels, _window(x, layer.kernel_size, layer.stride, layer.padding,
                                                         layer.dilation))
    _expect(x, 4, None)
    if op in ("maxpool", "avgpool"):
        return replace(x, spatial=_window(x, node["kernel"], node["stride"], node["padding"], (1, 1)))
    if op == "adaptive_avgpool":
        return replace(x, spatial=tuple(node["output_size"]))
    step = node["subsample"]  # subsample_pad
    return ValueShape(4, None if x.channels is None else x.channels + 2 * node["pad_channels"],
                      None if x.spatial is None else tuple(-(-size // step) for size in x.spatial))


def _expect(x: ValueShape, rank: int, channels: int | None) -> None:
    if x.rank != rank:
        raise ValueError(f"needs a {'NHWC' if rank == 4 else '[batch, features]'} input, got a rank-{x.rank} value")
    if channels is not None and x.channels is not None and x.channels != channels:
        raise ValueError(f"needs {channels} input channels, its input has {x.channels}")


def _window(x: ValueShape, kernel, stride, padding, dilation) -> tuple[int, int] | None:
    if x.spatial is None:
        return None
    size = tuple(conv_output_size(*args) for args in zip(x.spatial, kernel, stride, padding, dilation))
    if min(size) < 1:
        raise ValueError(f"a {list(kernel)} window does not fit its {x.spatial[0]}x{x.spatial[1]} input")
    return size


def _join(a: ValueShape, b: ValueShape) -> ValueShape:
    if a.rank != b.rank:
        raise ValueError(f"adds a rank-{a.rank} value to a rank-{b.rank} value")
    for what in ("channels", "spatial"):
        first, second = getattr(a, what), getattr(b, what)
        if first is not None and second is not None and first != second:
            raise ValueError(f"adds values of different {what}: {first} and {second}")
    return ValueShape(a.rank, a.channels if a.channels is not None else b.channels, a.spatial or b.spatial)


def _label(node: object) -> str:
    if not isinstance(node, dict):
        return repr(node)[:80]
    return f"{repr(node.get('output'))[:40]}, op {repr(node.get('op'))[:40]}"  # a corrupt file's values can be huge


def _count_at_least(minimum: int):
    return lambda value: is_int(value) and value >= minimum


def _pair_at_least(minimum: int):
    return lambda value: isinstance(value, list) and len(value) == 2 and all(map(_count_at_least(minimum), value))
