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
_INVALID_FIELDS = (((np.arange(256, dtype=np.uint8)[:, None] >> _SHIFTS) & CODE_MASK) == INVALID_CODE).sum(
    axis=1).astype(np.uint8)  # fields holding 0b10 in each byte value


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
    """(fields holding 0b10, rows whose padding past ``row_length`` is not all 0b00).

    Counted a byte at a time through a table (every load runs this over every ternary layer).
    """
    whole, tail = divmod(row_length, CODES_PER_BYTE)
    invalid = int(_INVALID_FIELDS[packed[:, :whole]].sum(dtype=np.int64))
    rest = packed[:, whole:]  # the byte holding the last weights, if shared with padding, then padding
    if tail and rest.shape[1]:
        shared = rest[:, 0]
        invalid += int(_INVALID_FIELDS[shared & ((1 << BITS_PER_CODE * tail) - 1)].sum(dtype=np.int64))
        padded = (shared >> BITS_PER_CODE * tail != 0) | rest[:, 1:].any(axis=1)
    else:
        padded = rest.any(axis=1)
    return invalid, int(padded.sum())
