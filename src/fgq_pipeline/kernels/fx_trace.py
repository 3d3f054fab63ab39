"""Trace a calibrated fake-quant model with torch.fx into the packed file's graph (format 2).

The tracer keeps QuantConv2d / QuantLinear and the CIFAR ResNets' option-A ChannelPadShortcut as
leaf modules (torch.nn's own modules are leaves already) and traces through everything else, so
torchvision's blocks become plain call_module / call_function / call_method nodes. Each fx node
becomes at most one graph node whose output is named after it: Dropout, Identity, contiguous()
and a BatchNorm folded into the quantized conv before it add no node (their value is their
input's), and x.size(0) / x.shape[0] are only read by view / reshape to (N, -1). Anything else is
refused with a ValueError naming the fx node, before the export writes anything.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from fgq_pipeline.quant.modules import QUANT_LAYERS, QuantConv2d

from .layer_packing import conv_geometry

RELU = {F.relu, F.relu_, torch.relu, torch.relu_, "relu", "relu_"}
ADD = {operator.add, operator.iadd, torch.add, "add", "add_"}
IN_PLACE = {F.relu_, torch.relu_, "relu_", operator.iadd, "add_"}
IDENTITY = {F.dropout, F.dropout1d, F.dropout2d, "contiguous"}
FLATTEN = {torch.flatten, "flatten"}
RESHAPE = {torch.reshape, "view", "reshape"}
MAX_POOL_ARGS = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
AVG_POOL_ARGS = ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
POOL_DEFAULTS = {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False,
                 "count_include_pad": True, "divisor_override": None}
SUPPORTED = ("quantized Conv2d (groups=1) / Linear, BatchNorm2d after a conv, ReLU, MaxPool2d, AvgPool2d, "
             "AdaptiveAvgPool2d, residual add, flatten / view / reshape to (N, -1), Dropout, Identity")
BATCH = ("dim", 0)  # the scalar x.size(0) / x.shape[0]


@dataclass(frozen=True)
class TracedLayer:
    """A quantized layer to pack: its qualified module name (the packed layer's name) and the
    BatchNorm2d folded into it, if any."""

    name: str
    module: nn.Module
    norm: nn.BatchNorm2d | None


class LeafTracer(fx.Tracer):
    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return (isinstance(module, QUANT_LAYERS) or is_channel_pad_shortcut(module)
                or super().is_leaf_module(module, qualified_name))


def is_channel_pad_shortcut(module: nn.Module) -> bool:
    """models.cifar_resnet.ChannelPadShortcut, known by name so the export does not import the model zoo."""
    return type(module).__name__ == "ChannelPadShortcut" and isinstance(getattr(module, "pad_each_side", None), int)


def trace_graph(model: nn.Module) -> tuple[list[dict], list[TracedLayer]]:
    """The graph nodes of ``model`` and its quantized layers in forward order."""
    try:
        graph = LeafTracer().trace(model)
    except Exception as error:  # fx raises TraceError, TypeError, NotImplementedError ... on dynamic code
        raise ValueError(f"torch.fx cannot trace {type(model).__name__}: {type(error).__name__}: {error}") from error
    return _GraphBuilder(model, graph).build()


class _GraphBuilder:
    def __init__(self, model: nn.Module, graph: fx.Graph):
        self.model, self.graph = model, graph
        self.live = _live(graph)
        self.order = {node: index for index, node in enumerate(graph.nodes)}
        self.nodes: list[dict] = []
        self.layers: list[TracedLayer] = []
        self.values: dict[fx.Node, str | tuple] = {}  # value names, or ("dim", k) / ("shape",) for sizes
        self.folded: dict[fx.Node, fx.Node] = {}  # BatchNorm node -> the conv node it folds into

    def build(self) -> tuple[list[dict], list[TracedLayer]]:
        for node in self.graph.nodes:
            if node not in self.live:
                continue
            if node.op == "placeholder":
                if self.nodes:
                    _refuse(node, "a second input", "the integer path takes one image batch")
                self.nodes.append({"op": "input", "inputs": [], "output": node.name})
                self.values[node] = node.name
            elif node.op == "call_module":
                self.module(node, self.model.get_submodule(node.target))
            elif node.op in ("call_function", "call_method"):
                self.function(node, node.target)
            elif node.op == "get_attr":
                _refuse(node, "a parameter or buffer", "the graph reads tensors from layers only")
            elif self.tensor(node, node.args[0]) != self.nodes[-1]["output"] or len(self.nodes) < 2:
                _refuse(node, "output", "the network must return the value its last operation computes")
        return self.nodes, self.layers

    def emit(self, node: fx.Node, op: str, inputs: list, **fields) -> None:
        names = [self.tensor(node, arg) for arg in inputs]
        if _in_place(node, self.model) and any(
                user in self.live and self.order[user] > self.order[node] for user in inputs[0].users):
            _refuse(node, _describe(node), "an in-place operation on a value that a later node reads (the graph "
                                           "is of values, so it would read the value from before the change)")
        self.nodes.append({"op": op, **fields, "inputs": names, "output": node.name})
        self.values[node] = node.name

    def alias(self, node: fx.Node, source: object) -> None:
        self.values[node] = self.tensor(node, source)

    def tensor(self, node: fx.Node, arg: object) -> str:
        value = self.values.get(arg) if isinstance(arg, fx.Node) else None
        if not isinstance(value, str):
            _refuse(node, _describe(node), f"its input {arg!r} is not an activation (a constant or a size)")
        return value

    def module(self, node: fx.Node, module: nn.Module) -> None:
        kind = type(module).__name__
        if len(node.args) != 1 or node.kwargs:
            _refuse(node, kind, "a module called with more than one argument")
        x = node.args[0]
        if isinstance(module, QUANT_LAYERS):
            self.quant_layer(node, module)
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            _refuse(node, kind, "not quantized: run quantize_model(model, config) and calibrate before export")
        elif isinstance(module, nn.BatchNorm2d) and node in self.folded:
            self.alias(node, self.folded[node])
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            _refuse(node, kind, "only a BatchNorm2d right after a quantized conv whose output nothing else reads "
                                "can be folded into that conv's scales and bias")
        elif isinstance(module, nn.ReLU):
            self.emit(node, "relu", [x])
        elif isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
            names = MAX_POOL_ARGS if isinstance(module, nn.MaxPool2d) else AVG_POOL_ARGS
            self.pool(node, {name: getattr(module, name) for name in names[1:]} | {"input": x})
        elif isinstance(module, nn.AdaptiveAvgPool2d):
            self.adaptive_pool(node, x, module.output_size)
        elif isinstance(module, nn.Flatten):
            self.flatten(node, x, module.start_dim, module.end_dim)
        elif isinstance(module, (nn.modules.dropout._DropoutNd, nn.Identity)):
            self.alias(node, x)
        elif is_channel_pad_shortcut(module):
            self.emit(node, "subsample_pad", [x], subsample=2, pad_channels=module.pad_each_side)
        else:
            _refuse(node, kind, f"no integer-path equivalent; the export runs {SUPPORTED}")

    def quant_layer(self, node: fx.Node, module: nn.Module) -> None:
        if any(layer.module is module for layer in self.layers):
            _refuse(node, type(module).__name__, "the layer is called a second time; each packed layer runs once")
        norm = None
        if isinstance(module, QuantConv2d):
            if module.groups != 1:
                _refuse(node, f"Conv2d with groups={module.groups}", "the integer kernels run dense convolutions "
                                                                     "(groups=1) only")
            try:
                conv_geometry(module)
            except ValueError as error:
                _refuse(node, "Conv2d", str(error))
            users = [user for user in node.users if user in self.live]
            user = self.model.get_submodule(users[0].target) if len(users) == 1 and (
                users[0].op == "call_module") else None
            if isinstance(user, nn.BatchNorm2d):
                norm, self.folded[users[0]] = user, node
        self.layers.append(TracedLayer(node.target, module, norm))
        self.emit(node, "conv" if isinstance(module, QuantConv2d) else "linear", [node.args[0]], layer=node.target)

    def function(self, node: fx.Node, target: object) -> None:
        args, kwargs = node.args, node.kwargs
        if target in RELU:
            self.emit(node, "relu", [args[0]])
        elif target in ADD:
            if kwargs.get("alpha", 1) != 1 or len(args) != 2:
                _refuse(node, _describe(node), "only a plain sum of two activations is supported")
            self.emit(node, "add", list(args))
        elif target in IDENTITY:
            self.alias(node, args[0])
        elif target in FLATTEN:
            bound = _bind(node, ("input", "start_dim", "end_dim"), {"start_dim": 0, "end_dim": -1})
            self.flatten(node, bound["input"], bound["start_dim"], bound["end_dim"])
        elif target in RESHAPE:
            shape = args[1:] if isinstance(target, str) else args[1]
            shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
            if len(shape) != 2 or shape[1] != -1 or self.values.get(shape[0]) != BATCH:
                _refuse(node, _describe(node), f"reshapes to {shape!r}; only (x.size(0), -1) is supported")
            self.emit(node, "flatten", [args[0]])
        elif target == "size" or (target is getattr and args[1:] == ("shape",)):
            self.tensor(node, args[0])
            self.values[node] = ("dim", args[1]) if len(args) > 1 and target == "size" else ("shape",)
        elif target is operator.getitem and self.values.get(args[0]) == ("shape",) and isinstance(args[1], int):
            self.values[node] = ("dim", args[1])
        elif target is F.max_pool2d:
            self.pool(node, _bind(node, MAX_POOL_ARGS, POOL_DEFAULTS))
        elif target is F.avg_pool2d:
            self.pool(node, _bind(node, AVG_POOL_ARGS, POOL_DEFAULTS))
        elif target is F.adaptive_avg_pool2d:
            self.adaptive_pool(node, *_bind(node, ("input", "output_size"), {}).values())
        else:
            _refuse(node, _describe(node), f"no integer-path equivalent; the export runs {SUPPORTED}")

    def flatten(self, node: fx.Node, x: object, start_dim: int, end_dim: int) -> None:
        if (start_dim, end_dim) != (1, -1):
            _refuse(node, _describe(node), f"flattens dims {start_dim}..{end_dim}; only (N, -1) is supported")
        self.emit(node, "flatten", [x])

    def pool(self, node: fx.Node, settings: dict) -> None:
        kind = "maxpool" if "dilation" in settings else "avgpool"
        if (settings.get("ceil_mode") or settings.get("return_indices") or settings.get("divisor_override")
                or _pair(settings.get("dilation", 1)) != (1, 1)):
            _refuse(node, _describe(node), "only floor-mode, undilated pooling without a divisor override or "
                                           "indices is supported")
        kernel = _pair(settings["kernel_size"])
        fields = {"kernel": list(kernel), "stride": list(_pair(settings["stride"] or kernel)),
                  "padding": list(_pair(settings["padding"]))}
        if kind == "avgpool":
            fields["count_include_pad"] = bool(settings["count_include_pad"])
        self.emit(node, kind, [settings["input"]], **fields)

    def adaptive_pool(self, node: fx.Node, x: object, output_size: object) -> None:
        size = (output_size,) * 2 if isinstance(output_size, int) else tuple(output_size)
        if len(size) != 2 or not all(isinstance(s, int) for s in size):
            _refuse(node, _describe(node), f"output size {output_size!r}; give both sizes as integers")
        self.emit(node, "adaptive_avgpool", [x], output_size=list(size))


def _live(graph: fx.Graph) -> set[fx.Node]:
    """Nodes the output depends on (fx keeps dead code; a dead branch is not exported)."""
    live, stack = set(), [node for node in graph.nodes if node.op == "output"]
    while stack:
        node = stack.pop()
        if node not in live:
            live.add(node)
            stack.extend(node.all_input_nodes)
    return live


def _in_place(node: fx.Node, model: nn.Module) -> bool:
    if node.op == "call_module":
        return bool(getattr(model.get_submodule(node.target), "inplace", False))
    return node.target in IN_PLACE or bool(node.kwargs.get("inplace")) or (
        node.target is F.relu and len(node.args) > 1 and node.args[1] is True)


def _bind(node: fx.Node, names: tuple[str, ...], defaults: dict) -> dict:
    bound = dict(zip(names, node.args)) | dict(node.kwargs)
    missing = [name for name in names if name not in bound and name not in defaults]
    if missing or set(bound) - set(names):
        _refuse(node, _describe(node), f"unexpected arguments {sorted(bound)}")
    return {name: bound.get(name, defaults.get(name)) for name in names}


def _pair(value: object) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    return (int(pair[0]), int(pair[1])) if len(pair) == 2 else (int(pair[0]),) * 2


def _describe(node: fx.Node) -> str:
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    if node.op == "call_module":
        return node.target
    name = getattr(node.target, "__name__", str(node.target))
    module = {"_operator": "operator", None: "torch" if getattr(torch, name, None) is node.target else None}.get(
        getattr(node.target, "__module__", None), getattr(node.target, "__module__", None))
    return f"{module}.{name}" if module else name


def _refuse(node: fx.Node, what: str, why: str) -> None:
    label = node.target if node.op == "call_module" else node.name
    raise ValueError(f"cannot export node {label!r} ({what}): {why}")
