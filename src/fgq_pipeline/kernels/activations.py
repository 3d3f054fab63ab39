"""Integer activations: how each quantized layer's float input becomes the integers it consumes.

The rounding is the fake-quant model's (round half to even, then saturate), so both paths feed a
layer the same integers. Unsigned inputs (after ReLU) are stored as uint8, signed ones as int8,
4-bit values one per byte.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from ..checks import is_int, is_number
from .scales import FP32_MAX, FP32_MIN_NORMAL

MIN_BITS, MAX_BITS = 2, 8


@dataclass(frozen=True)
class ActivationFormat:
    scale: float
    bits: int
    signed: bool

    def __post_init__(self) -> None:
        if not is_int(self.bits) or not MIN_BITS <= self.bits <= MAX_BITS:
            raise ValueError(f"activation bits must be an integer in {MIN_BITS}..{MAX_BITS}, got {self.bits!r}")
        if not isinstance(self.signed, bool):
            raise ValueError(f"activation signedness must be true or false, got {self.signed!r}")
        scale = self.scale  # the kernels divide by it in fp32: it must be a positive normal fp32 number
        if not is_number(scale) or not FP32_MIN_NORMAL <= scale <= FP32_MAX:
            raise ValueError(f"activation scale must be a finite positive number within fp32's normal range "
                             f"({FP32_MIN_NORMAL:.4g}..{FP32_MAX:.4g}), got {scale!r}")

    @property
    def integer_range(self) -> tuple[int, int]:
        """Unsigned [0, 2^b - 1]; signed symmetric [-(2^(b-1) - 1), 2^(b-1) - 1], as ActQuantizer."""
        if self.signed:
            return -(2 ** (self.bits - 1)) + 1, 2 ** (self.bits - 1) - 1
        return 0, 2**self.bits - 1

    @property
    def max_magnitude(self) -> int:
        return max(abs(bound) for bound in self.integer_range)

    @property
    def dtype(self) -> type[np.integer]:
        return np.int8 if self.signed else np.uint8

    def quantize(self, x: np.ndarray, padding: tuple[int, int] = (0, 0), channels: int | None = None) -> np.ndarray:
        """float32 -> integers: clamp(round(x / scale)), computed in float32 like the torch model.
        ``padding`` (NHWC ``x`` only): rows and columns of integer 0 on each side, and ``channels``:
        integer 0 channels after x's up to that many, written in the same pass, so a convolution can
        read its input in place (:func:`.packed.with_quad_channels`)."""
        qmin, qmax = self.integer_range
        x = np.ascontiguousarray(x, dtype=np.float32)
        pad_h, pad_w = padding
        if x.ndim != 4 and (pad_h or pad_w or channels):
            raise ValueError(f"padding needs an NHWC input, got shape {x.shape}")
        if channels is not None and channels < x.shape[-1]:
            raise ValueError(f"cannot pad {x.shape[-1]} channels to {channels}")
        images = x.reshape(-1, 1, 1, x.shape[-1]) if x.ndim != 4 else x
        batch, height, width, depth = images.shape
        integers = np.empty((batch, height + 2 * pad_h, width + 2 * pad_w, channels or depth), dtype=self.dtype)
        quantize_kernel(images, np.float32(self.scale), np.float32(qmin), np.float32(qmax), pad_h, pad_w, 0, integers)
        return integers if x.ndim == 4 else integers.reshape(x.shape)


@njit(cache=True, parallel=True)
def quantize_kernel(x, scale, qmin, qmax, pad_h, pad_w, offset, out):
    """One pass instead of numpy's four (divide, round, clip, cast) plus a padded copy; the same
    fp32 division and round-half-to-even, so the integers are the fake-quant model's bit for bit.
    ``offset`` is added to each integer as it is stored (128: signed values as the tiled kernels'
    unsigned bytes, :mod:`.compiled_pass`), padding (integer 0) included. Images in parallel."""
    batch, height, width, channels = x.shape
    for b in prange(batch):
        for h in range(out.shape[1]):
            row = out[b, h]
            if h < pad_h or h >= pad_h + height:
                row[:] = offset
                continue
            row[:pad_w] = offset
            row[pad_w + width:] = offset
            source = x[b, h - pad_h]
            for w in range(width):
                for c in range(channels):
                    row[pad_w + w, c] = min(max(np.rint(source[w, c] / scale), qmin), qmax) + offset
                row[pad_w + w, channels:] = offset
