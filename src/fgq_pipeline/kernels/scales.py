"""Storage precision of the per-group scales: fp32, fp16, or int8 times one fp32 scale per output filter.

At N=4 an fp32 scale adds 8 bits to every 2-bit weight, so the scale precision is the main storage
lever. int8 scales share one fp32 scale-of-scales per output filter, not per layer: a folded
BatchNorm makes different filters' scales differ by orders of magnitude, and one layer-wide grid
would leave the small filters a few steps. fp32 and fp16 scales multiply each group sum in fp32 (the
batched kernels decode them once, when the file loads; the batch-1 GEMV widens them in registers, so
narrower scales also cut what it streams). int8 scales never become floats: codes times q are int8
weights, summed in int32, and only the per-filter scale-of-scales multiplies in fp32
(:func:`.packed.as_int8_layer`).
"""

from __future__ import annotations

import numpy as np

SCALE_DTYPES = {"fp32": np.float32, "fp16": np.float16, "int8": np.int8}
SCALE_BITS = {"fp32": 32, "fp16": 16, "int8": 8}
SCALE_OF_SCALES_BITS = 32  # one fp32 per output filter, int8 scales only
INT8_SCALE_MAX = 127
FP16_MAX = float(np.finfo(np.float16).max)
FP32_MAX = float(np.finfo(np.float32).max)
FP32_MIN_NORMAL = float(np.finfo(np.float32).tiny)


def fp32_text(value: np.float32) -> str:
    """The shortest text that reads back as this fp32 (an f-string would print it widened to float64)."""
    return str(np.float32(value))


def validate_scale_dtype(scale_dtype: object) -> str:
    if scale_dtype not in SCALE_DTYPES:
        raise ValueError(f"scale_dtype must be one of {tuple(SCALE_DTYPES)}, got {scale_dtype!r}")
    return scale_dtype  # type: ignore[return-value]


def encode_scales(scales: np.ndarray, scale_dtype: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Stored scales [K, G] and, for int8, the fp32 scale-of-scales [K] they multiply.

    Row k: sos_k = fp32(max_g |s_kg| / 127) (1.0 for a row of zeros), q_kg = clip(rint(s_kg / sos_k),
    -127, 127). Scales may be negative: a folded BatchNorm with negative gamma flips a filter's sign.
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
    largest = np.abs(scales).max(axis=1, initial=np.float32(0.0))
    scale_of_scales = np.where(largest > 0, largest / np.float32(INT8_SCALE_MAX), np.float32(1.0)).astype(np.float32)
    if (scale_of_scales < FP32_MIN_NORMAL).any():
        row = int(np.argmax(scale_of_scales < FP32_MIN_NORMAL))
        raise ValueError(f"filter {row}'s largest scale {fp32_text(largest[row])} is too small for int8 scales (its "
                         f"scale-of-scales would fall below fp32's normal range); store fp16 or fp32 scales")
    quantized = np.clip(np.rint(scales / scale_of_scales[:, None]), -INT8_SCALE_MAX, INT8_SCALE_MAX)
    return quantized.astype(np.int8), scale_of_scales


def decode_scales(stored: np.ndarray, scale_of_scales: np.ndarray | None) -> np.ndarray:
    """fp32 scales for the kernels; int8 ones as fl(fp32(q_kg) * sos_k), one rounding."""
    if stored.dtype == np.int8:
        return stored.astype(np.float32) * scale_of_scales[:, None]
    return stored.astype(np.float32)
