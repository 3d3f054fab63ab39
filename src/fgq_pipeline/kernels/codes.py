"""2-bit ternary codes, four to a byte, in the order the kernels read the reduction axis.

Encoding: 0 -> 0b00, +1 -> 0b01, -1 -> 0b11 (the two low bits of the two's-complement value, so a
sign-extending shift decodes them); 0b10 never occurs and marks a corrupt file. Weight j of a row
sits in byte j // 4 at bits 2 * (j % 4) and 2 * (j % 4) + 1; a row's last byte is padded with 0b00.
"""

from __future__ import annotations

import numpy as np

CODES_PER_BYTE = 4
BITS_PER_CODE = 2
CODE_MASK = 0b11
INVALID_CODE = 0b10
_SHIFTS = np.arange(CODES_PER_BYTE, dtype=np.uint8) * BITS_PER_CODE


def packed_row_bytes(row_length: int) -> int:
    return -(-row_length // CODES_PER_BYTE)


def pack_codes(codes: np.ndarray) -> np.ndarray:
    """int8 codes [K, L] in {-1, 0, +1} -> uint8 [K, ceil(L / 4)]."""
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must be a [rows, reduction] matrix, got shape {codes.shape}")
    bad = ~np.isin(codes, (-1, 0, 1))
    if bad.any():
        raise ValueError(f"codes must be -1, 0 or +1, found {codes[bad][0]!r}")
    rows, length = codes.shape
    padded = np.zeros((rows, packed_row_bytes(length) * CODES_PER_BYTE), dtype=np.uint8)
    padded[:, :length] = codes.astype(np.int8).view(np.uint8) & CODE_MASK
    fields = padded.reshape(rows, -1, CODES_PER_BYTE) << _SHIFTS
    return np.bitwise_or.reduce(fields, axis=-1).astype(np.uint8)


def unpack_codes(packed: np.ndarray, row_length: int) -> np.ndarray:
    """uint8 [K, B] -> int8 codes [K, row_length] (the inverse of :func:`pack_codes`)."""
    fields = (packed[:, :, None] >> _SHIFTS) & CODE_MASK
    values = fields.reshape(packed.shape[0], -1)[:, :row_length].astype(np.int8)
    return np.where(values == CODE_MASK, np.int8(-1), values)


def code_faults(packed: np.ndarray, row_length: int) -> tuple[int, int]:
    """(fields holding 0b10, rows whose padding past ``row_length`` is not all 0b00)."""
    fields = ((packed[:, :, None] >> _SHIFTS) & CODE_MASK).reshape(packed.shape[0], -1)
    return int((fields[:, :row_length] == INVALID_CODE).sum()), int(fields[:, row_length:].any(axis=1).sum())
