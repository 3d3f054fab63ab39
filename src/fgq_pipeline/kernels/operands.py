"""Shape and dtype checks for the kernels' operands: the Numba loops index without bounds checks,
so a wrong shape must be caught before it turns into a read past an array's end."""

from __future__ import annotations

import numpy as np

ACTIVATION_DTYPES = (np.uint8, np.int8)


def check_activations(x: np.ndarray) -> None:
    if not isinstance(x, np.ndarray) or x.ndim != 2 or x.dtype not in ACTIVATION_DTYPES or not x.flags.c_contiguous:
        raise ValueError(f"activations must be a C-contiguous uint8 or int8 matrix [M, L], "
                         f"got {getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}")


def check_operand(array: np.ndarray, what: str, dtype: type, shape: tuple[int, ...]) -> None:
    if not isinstance(array, np.ndarray) or array.dtype != dtype or array.shape != shape or not array.flags.c_contiguous:
        raise ValueError(f"{what} must be C-contiguous {np.dtype(dtype)} {shape}, "
                         f"got {getattr(array, 'dtype', type(array).__name__)} {getattr(array, 'shape', '')}")
