"""Export a calibrated fake-quant model to a packed file that :class:`IntegerNet` runs.

torch.fx traces the model (see :mod:`.fx_trace`) into the network graph (see :mod:`.graph`); every
quantized layer is packed with the BatchNorm after it folded in (see :mod:`.layer_packing`); the
graph is validated against the packed layers as the loader will; only then is the file written,
so a model the integer path cannot run leaves no file behind.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .fx_trace import trace_graph
from .graph import validate_graph
from .layer_packing import pack_quant_layer
from .packed_file import PackedModel, save_packed
from .scales import validate_scale_dtype

__all__ = ["export_packed", "pack_model", "pack_quant_layer"]


def export_packed(model: nn.Module, path: str | Path, scale_dtype: str = "fp32") -> Path:
    """Pack every quantized layer of ``model`` (after quantize_model and calibration) into ``path``.

    Layers kept at 8 bits (first conv, last linear under first_last_8bit) run as int8 GEMMs, so
    the whole network consumes integer activations.
    """
    packed = pack_model(model, scale_dtype)
    return save_packed(path, list(packed.layers.values()), packed.graph)


def pack_model(model: nn.Module, scale_dtype: str = "fp32") -> PackedModel:
    """What :func:`export_packed` writes, in memory: the traced graph and the packed layers, validated."""
    validate_scale_dtype(scale_dtype)
    nodes, traced = trace_graph(model)
    with torch.no_grad():
        layers = {layer.name: pack_quant_layer(layer.name, layer.module, layer.norm, scale_dtype) for layer in traced}
    validate_graph(nodes, layers)
    return PackedModel(layers=layers, graph=nodes)
