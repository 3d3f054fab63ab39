"""Storage precision of the per-group scales: fp32, fp16, or int8 times one fp32 scale-of-scales.

At N=4 an fp32 scale adds 8 bits to every 2-bit weight, so the scale precision is the main storage
lever. The kernels always multiply in fp32. The batched ones use scales decoded once, when the file
loads; the batch-1 GEMV reads them as stored and widens them in registers, so narrower scales also
cut what it streams from memory.
"""

from __future__ import annotations

import numpy as np

SCALE_DTYPES = {"fp32": np.float32, "fp16": np.float16, "int8": np.int8}
SCALE_BITS = {"fp32": 32, "fp16": 16, "int8": 8}
INT8_SCALE_MAX = 127
FP16_MAX = float(np.finfo(np.float16).max)
FP32_MAX = float(np.finfo(np.float32).max)
FP32_MIN_NORMAL = float(np.finfo(np.float32).tiny)


def validate_scale_dtype(scale_dtype: object) -> str:
    if scale_dtype not in SCALE_DTYPES:
        raise ValueError(f"scale_dtype must be one of {tuple(SCALE_DTYPES)}, got {scale_dtype!r}")
    return scale_dtype  # type: ignore[return-value]


def encode_scales(scales: np.ndarray, scale_dtype: str) -> tuple[np.ndarray, float | None]:
    """Stored scales and, for int8, the fp32 scale-of-scales (max |scale| / 127) they multiply.

    Scales may be negative: a folded BatchNorm with negative gamma flips a filter's sign.
    """
    validate_scale_dtype(scale_dtype)
    scales = np.asarray(scales, dtype=np.float32)
    if not np.isfinite(scales).all():
        raise ValueError("scales hold NaN or Inf; only finite scales can be stored")
    if scale_dtype == "fp32":
        return scales.copy(), None
    if scale_dtype == "fp16":
        largest = float(np.abs(scales).max(initial=0.0))
        if largest > FP16_MAX:
            raise ValueError(f"a scale of magnitude {largest} overflows fp16 (max {FP16_MAX}); store fp32 scales")
        return scales.astype(np.float16), None
    largest = float(np.abs(scales).max(initial=0.0))
    scale_of_scales = float(np.float32(largest / INT8_SCALE_MAX)) if largest > 0 else 1.0
    quantized = np.clip(np.rint(scales / np.float32(scale_of_scales)), -INT8_SCALE_MAX, INT8_SCALE_MAX)
    return quantized.astype(np.int8), scale_of_scales


def decode_scales(stored: np.ndarray, scale_of_scales: float | None) -> np.ndarray:
    """fp32 scales for the kernels."""
    if stored.dtype == np.int8:
        return stored.astype(np.float32) * np.float32(scale_of_scales)
    return stored.astype(np.float32)
