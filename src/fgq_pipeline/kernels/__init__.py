"""The integer path: packed 2-bit ternary format, Numba kernels and whole-network integer inference.

Runs on numpy, Numba and safetensors; only :func:`export_packed` and :func:`torch_twin` touch torch
(they read the fake-quant model), so it loads on first use (PEP 562) and importing this package does not load
torch. Nothing here imports Lightning, MLflow, Hydra or DVC.
"""

from .numba_cache import invalidate_if_changed

invalidate_if_changed()  # before any cached kernel loads: no cached caller keeps a changed kernel

from .activations import ActivationFormat
from .int8_gemm import int8_gemm
from .integer_net import IntegerNet
from .packed import PackedLayer, bits_per_weight, pack_int8_layer, pack_ternary_layer
from .packed_file import PackedModel, load_packed, save_packed
from .ternary_gemm import ternary_gemm, ternary_gemv

__all__ = [
    "ActivationFormat", "IntegerNet", "PackedLayer", "PackedModel", "bits_per_weight", "export_packed", "int8_gemm",
    "load_packed", "pack_int8_layer", "pack_ternary_layer", "save_packed", "ternary_gemm", "ternary_gemv", "torch_twin",
]


def __getattr__(name: str):
    if name == "export_packed":
        from .export import export_packed

        return export_packed
    if name == "torch_twin":
        from .torch_twin import torch_twin

        return torch_twin
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
