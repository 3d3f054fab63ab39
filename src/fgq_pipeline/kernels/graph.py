"""The network graph of a packed file: the float32 operations between quantized layers.

A graph is a list of operations applied in order to one running NHWC activation; a residual block
saves its input with ``save_shortcut`` and ``add_shortcut`` adds it back (option A: subsample by
two, zero-pad channels on both sides). Everything here is in float32, exactly where the fake-quant
model computes in float; the quantize step belongs to each quantized layer's input.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

OPERATION_FIELDS = {
    "layer": {"name"},
    "relu": set(),
    "maxpool": {"kernel", "stride"},
    "global_avgpool": set(),
    "flatten": set(),
    "save_shortcut": set(),
    "add_shortcut": {"subsample", "pad_channels"},
}


def validate_graph(graph: object, layer_names: set[str]) -> list[dict]:
    """Raise ValueError on an unknown operation, a bad field, an unknown layer or unbalanced shortcuts."""
    if not isinstance(graph, list) or not graph:
        raise ValueError("the file holds no network graph (export it with export_packed)")
    saved = 0
    for position, operation in enumerate(graph):
        where = f"graph operation {position} ({operation!r})"
        if not isinstance(operation, dict) or not isinstance(operation.get("op"), str) or (
                operation["op"] not in OPERATION_FIELDS):
            raise ValueError(f"{where}: op must be one of {sorted(OPERATION_FIELDS)}")
        if set(operation) - {"op"} != OPERATION_FIELDS[operation["op"]]:
            raise ValueError(f"{where}: fields must be {sorted(OPERATION_FIELDS[operation['op']])}")
        kind = operation["op"]
        if kind == "layer" and (not isinstance(operation["name"], str) or operation["name"] not in layer_names):
            raise ValueError(f"{where}: no layer of that name in the file")
        if kind == "maxpool" and not all(_positive_pair(operation[key]) for key in ("kernel", "stride")):
            raise ValueError(f"{where}: kernel and stride must be two positive integers")
        if kind == "add_shortcut" and not (operation["subsample"] in (1, 2) and _count(operation["pad_channels"])):
            raise ValueError(f"{where}: subsample must be 1 or 2 and pad_channels an integer >= 0")
        saved += {"save_shortcut": 1, "add_shortcut": -1}.get(kind, 0)
        if saved < 0:
            raise ValueError(f"{where}: adds a shortcut that was never saved")
    if saved:
        raise ValueError(f"the graph saves {saved} shortcut(s) it never adds back")
    return graph


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, np.float32(0.0))


def max_pool(x: np.ndarray, kernel: list[int], stride: list[int]) -> np.ndarray:
    """NHWC max pooling without padding, floor mode (as nn.MaxPool2d's defaults)."""
    windows = sliding_window_view(x, tuple(kernel), axis=(1, 2))[:, :: stride[0], :: stride[1]]
    return windows.max(axis=(-2, -1))


def global_avg_pool(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=(1, 2), keepdims=True, dtype=np.float32)


def flatten(x: np.ndarray) -> np.ndarray:
    """Only after global pooling, where NHWC and NCHW flatten to the same order."""
    if x.ndim == 4 and x.shape[1:3] != (1, 1):
        raise ValueError(f"flatten is supported after global pooling only, got spatial size {x.shape[1:3]}")
    return x.reshape(x.shape[0], -1)


def add_shortcut(x: np.ndarray, shortcut: np.ndarray, subsample: int, pad_channels: int) -> np.ndarray:
    shortcut = shortcut[:, ::subsample, ::subsample]
    if pad_channels:
        shortcut = np.pad(shortcut, ((0, 0), (0, 0), (0, 0), (pad_channels, pad_channels)))
    if shortcut.shape != x.shape:
        raise ValueError(f"the shortcut has shape {shortcut.shape} (NHWC) but the block output {x.shape}")
    return x + shortcut


def _positive_pair(value: object) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(_count(v) and v > 0 for v in value)


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
