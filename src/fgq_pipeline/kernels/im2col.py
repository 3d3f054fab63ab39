"""im2col for NHWC integer activations, columns in (r, s, c) order: the reduction order of the
packed weights, so N consecutive input channels at one kernel position stay one contiguous group.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def im2col(
    x: np.ndarray, kernel_size: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]
) -> tuple[np.ndarray, tuple[int, int]]:
    """[B, H, W, C] -> columns [B * OH * OW, R * S * C] and (OH, OW); zero padding (integer 0 is
    float 0, as in the conv)."""
    batch, height, width, channels = x.shape
    (rows, cols), (stride_h, stride_w), (pad_h, pad_w) = kernel_size, stride, padding
    out_h = conv_output_size(height, rows, stride_h, pad_h)
    out_w = conv_output_size(width, cols, stride_w, pad_w)
    if out_h < 1 or out_w < 1:
        raise ValueError(f"a {rows}x{cols} kernel with padding {padding} does not fit a {height}x{width} input")
    padded = np.pad(x, ((0, 0), (pad_h, pad_h), (pad_w, pad_w), (0, 0)))
    windows = sliding_window_view(padded, (rows, cols), axis=(1, 2))[:, ::stride_h, ::stride_w]
    windows = windows[:, :out_h, :out_w]  # [B, OH, OW, C, R, S]
    columns = np.ascontiguousarray(windows.transpose(0, 1, 2, 4, 5, 3)).reshape(batch * out_h * out_w, -1)
    return columns, (out_h, out_w)
