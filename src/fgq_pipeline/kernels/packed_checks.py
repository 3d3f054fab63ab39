"""Consistency and range checks of a packed layer, run whenever one is built or loaded.

A file that passes them cannot make a kernel read out of bounds, overflow its accumulator or
decode a code that is not -1, 0 or +1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..checks import is_int
from .activations import ActivationFormat
from .codes import code_faults, packed_row_bytes
from .scales import FP32_MAX, FP32_MIN_NORMAL, INT8_SCALE_MAX, SCALE_DTYPES, fp32_text

if TYPE_CHECKING:
    from .packed import PackedLayer

KINDS = ("conv", "linear")
WEIGHT_FORMATS = ("ternary", "int8")
INT8_WEIGHT_MAX = 127
ACCUMULATOR_MAX = 2**31 - 1  # int32


def validate_layer(layer: PackedLayer) -> None:
    """Raise ValueError naming the layer and the first field that is inconsistent or out of range."""
    try:
        _check_geometry(layer)
        _check_weights(layer)
        _check_scales(layer)
        _check_array(layer.bias, "bias", np.float32, (layer.out_channels,))
        if not np.isfinite(layer.bias).all():
            raise ValueError("bias holds NaN or Inf")
        _check_accumulator(layer)
    except ValueError as error:
        raise ValueError(f"layer {layer.name!r}: {error}") from None


def _check_geometry(layer: PackedLayer) -> None:
    if not isinstance(layer.name, str) or not layer.name:
        raise ValueError(f"name must be a non-empty string, got {layer.name!r}")
    if not isinstance(layer.kind, str) or layer.kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {layer.kind!r}")
    dims = 4 if layer.kind == "conv" else 2
    shape = layer.weight_shape
    if not isinstance(shape, tuple) or len(shape) != dims or not all(is_int(d) and d > 0 for d in shape):
        raise ValueError(f"a {layer.kind} weight shape must be {dims} positive integers, got {shape!r}")
    if layer.kind == "linear":
        if layer.stride is not None or layer.padding is not None or layer.dilation is not None:
            raise ValueError(f"a linear layer has no stride, padding or dilation, got {layer.stride!r} / "
                             f"{layer.padding!r} / {layer.dilation!r}")
    elif not (_int_pair(layer.stride, minimum=1) and _int_pair(layer.padding, minimum=0)
              and _int_pair(layer.dilation, minimum=1)):
        raise ValueError(f"conv stride and dilation must be two integers >= 1 and padding two integers >= 0, "
                         f"got stride {layer.stride!r}, padding {layer.padding!r}, dilation {layer.dilation!r}")
    if not isinstance(layer.activation, ActivationFormat):
        raise ValueError(f"activation must be an ActivationFormat, got {type(layer.activation).__name__}")


def _check_weights(layer: PackedLayer) -> None:
    if not isinstance(layer.weight_format, str) or layer.weight_format not in WEIGHT_FORMATS:
        raise ValueError(f"weight format must be one of {WEIGHT_FORMATS}, got {layer.weight_format!r}")
    if layer.weight_format == "int8":
        if layer.group_size is not None:
            raise ValueError(f"an int8 layer has one scale per filter and no group size, got {layer.group_size!r}")
        _check_array(layer.weights, "weights", np.int8, (layer.out_channels, layer.reduction_length))
        if (layer.weights == -INT8_WEIGHT_MAX - 1).any():
            raise ValueError("int8 weights must lie in [-127, 127], found -128")
        return
    if not is_int(layer.group_size) or not 1 <= layer.group_size <= layer.in_channels:
        raise ValueError(f"group size must be an integer in 1..{layer.in_channels} (C), got {layer.group_size!r}")
    _check_array(layer.weights, "codes", np.uint8, (layer.out_channels, packed_row_bytes(layer.reduction_length)))
    invalid, padded_rows = code_faults(layer.weights, layer.reduction_length)
    if invalid:
        raise ValueError(f"codes hold {invalid} fields with the unused pattern 0b10")
    if padded_rows:
        raise ValueError(f"{padded_rows} code rows have non-zero padding past weight {layer.reduction_length}")


def _check_scales(layer: PackedLayer) -> None:
    if not isinstance(layer.scale_dtype, str) or layer.scale_dtype not in SCALE_DTYPES:
        raise ValueError(f"scale dtype must be one of {tuple(SCALE_DTYPES)}, got {layer.scale_dtype!r}")
    _check_array(layer.scales, "scales", SCALE_DTYPES[layer.scale_dtype], (layer.out_channels, layer.groups_per_filter))
    if layer.scale_dtype == "int8":
        _check_scale_of_scales(layer)
    elif layer.scale_of_scales is not None:
        raise ValueError(f"only int8 scales take a scale-of-scales, got one with {layer.scale_dtype} scales "
                         f"({_describe(layer.scale_of_scales)})")
    if not np.isfinite(layer.scales).all():
        raise ValueError("scales hold NaN or Inf")


def _check_scale_of_scales(layer: PackedLayer) -> None:
    """One fp32 per output filter, each a normal positive number, that no stored int8 scale overflows."""
    sos = layer.scale_of_scales
    if sos is None:
        raise ValueError("int8 scales need a scale-of-scales per output filter (fp32 [K]), got none")
    _check_array(sos, "scale-of-scales", np.float32, (layer.out_channels,))
    bad = ~((sos >= FP32_MIN_NORMAL) & (sos <= FP32_MAX))  # NaN fails both comparisons
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(f"the scale-of-scales of filter {row} is {fp32_text(sos[row])}; each must be a finite "
                         f"positive number within fp32's normal range [{FP32_MIN_NORMAL}, {FP32_MAX}]")
    if (layer.scales == -INT8_SCALE_MAX - 1).any():
        row = int(np.argmax((layer.scales == -INT8_SCALE_MAX - 1).any(axis=1)))
        raise ValueError(f"int8 scales must lie in [-127, 127], found -128 in filter {row}")
    with np.errstate(over="ignore"):
        overflowing = ~np.isfinite(layer.fp32_scales).all(axis=1)
    if overflowing.any():
        row = int(np.argmax(overflowing))
        raise ValueError(f"int8 scales of filter {row} times its scale-of-scales {fp32_text(sos[row])} overflow fp32")


def _check_accumulator(layer: PackedLayer) -> None:
    """The kernels sum a group in int32: |sum| <= terms * max|weight| * max|activation|. A ternary layer
    with int8 scales runs as int8 weights t * q over its whole filter (:func:`.packed.as_int8_layer`)."""
    int8_sum = layer.weight_format == "int8" or layer.scale_dtype == "int8"
    terms, weight_max = (layer.reduction_length, INT8_WEIGHT_MAX) if int8_sum else (layer.group_size, 1)
    bound = terms * weight_max * layer.activation.max_magnitude
    if bound > ACCUMULATOR_MAX:
        raise ValueError(f"a group sum can reach {bound}, beyond the int32 accumulator ({ACCUMULATOR_MAX})")


def _check_array(array: object, what: str, dtype: type, shape: tuple[int, ...]) -> None:
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{what} must be a numpy array, got {type(array).__name__}")
    if array.dtype != dtype or array.shape != shape:
        raise ValueError(f"{what} is {array.dtype} {array.shape}, expected {np.dtype(dtype)} {shape}")


def _describe(value: object) -> str:
    """An array by dtype and shape (its values can be many), anything else by its type."""
    return f"{value.dtype} {value.shape}" if isinstance(value, np.ndarray) else type(value).__name__


def _int_pair(value: object, minimum: int) -> bool:
    return isinstance(value, tuple) and len(value) == 2 and all(is_int(v) and v >= minimum for v in value)
