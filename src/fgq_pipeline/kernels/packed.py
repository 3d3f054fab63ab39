"""One quantized layer as the integer kernels read it: packed weights, per-group scales, bias and
the format of its integer input.

Weights are laid out along the reduction axis in (r, s, c) order, the order of the im2col
columns: index j = (r * S + s) * C + c, so a group (N consecutive input channels at one kernel
position) is a contiguous run of j. Scales follow the same order: [K, R * S * G], group index
(r * S + s) * G + g. Ternary layers hold 2-bit codes (see :mod:`.codes`); 8-bit layers (the first
conv and the last linear under the first_last_8bit policy) hold int8 weights with one scale per
output filter, i.e. one group spanning the whole filter.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from .activations import ActivationFormat
from .codes import pack_codes, unpack_codes
from .packed_checks import validate_layer
from .scales import SCALE_BITS, SCALE_OF_SCALES_BITS, decode_scales, encode_scales


@dataclass(frozen=True)
class PackedLayer:
    """``weights``: uint8 codes [K, ceil(L / 4)] (ternary) or int8 [K, L] (int8).

    ``scales`` are stored in ``scale_dtype`` ([K, groups per filter]); int8 scales multiply
    ``scale_of_scales`` (fp32 [K], one per output filter; None for fp32 and fp16). The kernels use
    :attr:`fp32_scales`, or, with int8 scales, the int8 layer of :func:`as_int8_layer`. ``bias`` (fp32 [K]) holds the layer bias, the bias correction and any
    folded BatchNorm shift. ``group_size`` is the effective N (capped at C), None for int8 layers.
    """

    name: str
    kind: str
    weight_format: str
    weight_shape: tuple[int, ...]
    stride: tuple[int, int] | None
    padding: tuple[int, int] | None
    dilation: tuple[int, int] | None
    group_size: int | None
    weights: np.ndarray
    scales: np.ndarray
    scale_dtype: str
    scale_of_scales: np.ndarray | None
    bias: np.ndarray
    activation: ActivationFormat

    def __post_init__(self) -> None:
        validate_layer(self)

    @property
    def out_channels(self) -> int:
        return self.weight_shape[0]

    @property
    def in_channels(self) -> int:
        return self.weight_shape[1]

    @property
    def kernel_size(self) -> tuple[int, int]:
        return (self.weight_shape[2], self.weight_shape[3]) if self.kind == "conv" else (1, 1)

    @property
    def kernel_positions(self) -> int:
        rows, cols = self.kernel_size
        return rows * cols

    @property
    def reduction_length(self) -> int:
        return self.in_channels * self.kernel_positions

    @property
    def groups_per_filter(self) -> int:
        if self.weight_format == "int8":
            return 1
        return self.kernel_positions * -(-self.in_channels // self.group_size)

    @property
    def fp32_scales(self) -> np.ndarray:
        return decode_scales(self.scales, self.scale_of_scales)

    @property
    def weight_count(self) -> int:
        return self.out_channels * self.reduction_length

    @property
    def storage_bits(self) -> int:
        """Bits of weights and scales as stored (row padding and the per-filter scale-of-scales included).

        The fp32 bias is left out: every format, FP32 included, carries it.
        """
        weight_bits = self.weights.size * 8
        scale_bits = self.scales.size * SCALE_BITS[self.scale_dtype]
        sos_bits = 0 if self.scale_of_scales is None else self.scale_of_scales.size * SCALE_OF_SCALES_BITS
        return weight_bits + scale_bits + sos_bits


def bits_per_weight(layers: PackedLayer | list[PackedLayer]) -> float:
    """Storage bits per weight of one layer or of a whole packed model (weights and scales)."""
    layers = [layers] if isinstance(layers, PackedLayer) else list(layers)
    if not layers:
        raise ValueError("bits_per_weight needs at least one packed layer")
    return sum(layer.storage_bits for layer in layers) / sum(layer.weight_count for layer in layers)


def as_int8_layer(layer: PackedLayer) -> PackedLayer:
    """A ternary layer with int8 scales as the 8-bit layer it defines: weights t_ki * q_k,g(i) (|w| <= 127),
    one fp32 scale sos_k per filter. Every kernel and the twin run it so: an exact int32 sum over the
    whole filter, then one fp32 multiply by sos_k; other layers are returned as they are."""
    if layer.weight_format != "ternary" or layer.scale_dtype != "int8":
        return layer
    channels, length = layer.in_channels, layer.reduction_length
    column = np.arange(length)
    group = (column // channels) * -(-channels // layer.group_size) + (column % channels) // layer.group_size
    weights = unpack_codes(layer.weights, length) * layer.scales[:, group]  # int8 * int8 -> int8: |t q| <= 127
    return PackedLayer(
        name=layer.name, kind=layer.kind, weight_format="int8", weight_shape=layer.weight_shape, stride=layer.stride,
        padding=layer.padding, dilation=layer.dilation, group_size=None, weights=weights.astype(np.int8),
        scales=layer.scale_of_scales.reshape(-1, 1).copy(), scale_dtype="fp32", scale_of_scales=None,
        bias=layer.bias, activation=layer.activation,
    )


def with_quad_channels(layer: PackedLayer) -> PackedLayer:
    """An int8 conv whose input channels are not a multiple of 4 (an RGB stem) with zero-weight input
    channels added up to one, so that the tiled kernels read each kernel position in whole quads;
    its input gets as many zero channels (the sums do not change). Other layers as they are."""
    channels = layer.in_channels
    if layer.weight_format != "int8" or layer.kind != "conv" or channels % 4 == 0:
        return layer
    wider = -(-channels // 4) * 4
    weights = np.zeros((layer.out_channels, layer.kernel_positions, wider), dtype=np.int8)
    weights[:, :, :channels] = layer.weights.reshape(layer.out_channels, layer.kernel_positions, channels)
    return dataclasses.replace(layer, weight_shape=(layer.out_channels, wider, *layer.kernel_size),
                               weights=weights.reshape(layer.out_channels, -1))


def to_reduction_order(array: np.ndarray) -> np.ndarray:
    """[K, C, R, S] (or [K, C]) -> [K, R * S * C]: channels innermost, as the im2col columns."""
    return np.ascontiguousarray(np.moveaxis(np.asarray(array), 1, -1).reshape(array.shape[0], -1))


def pack_ternary_layer(
    name: str,
    codes: np.ndarray,
    scales: np.ndarray,
    group_size: int,
    bias: np.ndarray,
    activation: ActivationFormat,
    stride: tuple[int, int] | None = None,
    padding: tuple[int, int] | None = None,
    scale_dtype: str = "fp32",
    dilation: tuple[int, int] | None = None,
) -> PackedLayer:
    """Pack ternary ``codes`` ([K, C, R, S] or [K, C]) and ``scales`` ([K, G, R, S] or [K, G]).

    ``group_size`` is the effective N (at most C), as the scales were computed with.
    """
    codes = np.asarray(codes)
    stored, scale_of_scales = encode_scales(to_reduction_order(scales), scale_dtype)
    return PackedLayer(
        name=name, kind=_kind(codes), weight_format="ternary", weight_shape=tuple(int(d) for d in codes.shape),
        stride=stride, padding=padding, dilation=_dilation(codes, dilation), group_size=group_size,
        weights=pack_codes(to_reduction_order(codes)),
        scales=stored, scale_dtype=scale_dtype, scale_of_scales=scale_of_scales,
        bias=np.asarray(bias, dtype=np.float32), activation=activation,
    )


def pack_int8_layer(
    name: str,
    weights: np.ndarray,
    channel_scales: np.ndarray,
    bias: np.ndarray,
    activation: ActivationFormat,
    stride: tuple[int, int] | None = None,
    padding: tuple[int, int] | None = None,
    dilation: tuple[int, int] | None = None,
) -> PackedLayer:
    """Symmetric int8 ``weights`` ([K, C, R, S] or [K, C]) with one fp32 scale per output filter."""
    weights = np.asarray(weights)
    return PackedLayer(
        name=name, kind=_kind(weights), weight_format="int8", weight_shape=tuple(int(d) for d in weights.shape),
        stride=stride, padding=padding, dilation=_dilation(weights, dilation), group_size=None,
        weights=to_reduction_order(weights),
        scales=np.asarray(channel_scales, dtype=np.float32).reshape(-1, 1), scale_dtype="fp32",
        scale_of_scales=None, bias=np.asarray(bias, dtype=np.float32), activation=activation,
    )


def _kind(weights: np.ndarray) -> str:
    if weights.ndim == 4:
        return "conv"
    if weights.ndim == 2:
        return "linear"
    raise ValueError(f"weights must be [K, C, R, S] (conv) or [K, C] (linear), got shape {weights.shape}")


def _dilation(weights: np.ndarray, dilation: tuple[int, int] | None) -> tuple[int, int] | None:
    """A conv without an explicit dilation has dilation 1; a linear layer has none."""
    return (1, 1) if dilation is None and _kind(weights) == "conv" else dilation
