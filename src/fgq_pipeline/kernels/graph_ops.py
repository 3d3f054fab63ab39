"""The float32 operations between quantized layers, on NHWC activations. Average pools add a window's
cells in row-major order, one fp32 addition at a time, as the torch twin (:mod:`.torch_twin`) does."""

from __future__ import annotations

import numpy as np
from numba import njit, prange
from numpy.lib.stride_tricks import sliding_window_view


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, np.float32(0.0))


def max_pool(x: np.ndarray, kernel: list[int], stride: list[int], padding: list[int]) -> np.ndarray:
    """nn.MaxPool2d in floor mode; padding never wins (-inf), as in torch."""
    return _windows(_pad(x, padding, -np.inf), kernel, stride).max(axis=(-2, -1))


def avg_pool(x: np.ndarray, kernel: list[int], stride: list[int], padding: list[int],
             count_include_pad: bool) -> np.ndarray:
    """nn.AvgPool2d in floor mode: the window sum, then one division by the kernel area or by the
    cells inside the input. Sums run in the window's row-major order (the torch twin's order)."""
    sums = _window_sum(_pad(x, padding, 0.0), kernel, stride)
    if count_include_pad or not any(padding):
        return sums / np.float32(kernel[0] * kernel[1])
    inside = _pad(np.ones((1, *x.shape[1:3], 1), np.float32), padding, 0.0)
    return sums / _window_sum(inside, kernel, stride)


def adaptive_avg_pool(x: np.ndarray, output_size: list[int]) -> np.ndarray:
    """nn.AdaptiveAvgPool2d: output cell i averages input rows floor(i H / OH) .. ceil((i + 1) H / OH) - 1."""
    batch, height, width, channels = x.shape
    out_h, out_w = output_size
    out = np.empty((batch, out_h, out_w, channels), np.float32)
    for i in range(out_h):
        rows = slice(i * height // out_h, -(-(i + 1) * height // out_h))
        for j in range(out_w):
            cell = x[:, rows, j * width // out_w: -(-(j + 1) * width // out_w)]
            count = cell.shape[1] * cell.shape[2]
            out[:, i, j] = _window_sum(cell, list(cell.shape[1:3]), [1, 1])[:, 0, 0] / np.float32(count)
    return out


def flatten(x: np.ndarray) -> np.ndarray:
    """torch.flatten(x, 1) of the NCHW tensor this NHWC array holds: channels outermost."""
    if x.ndim == 2:
        return x
    if x.shape[1:3] != (1, 1):
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x).reshape(x.shape[0], -1)


def add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.shape != b.shape:
        raise ValueError(f"cannot add values of shapes {a.shape} and {b.shape} (NHWC)")
    return a + b


def subsample_pad(x: np.ndarray, subsample: int, pad_channels: int) -> np.ndarray:
    """Option-A shortcut: every ``subsample``-th row and column, ``pad_channels`` zero channels on each side."""
    x = x[:, ::subsample, ::subsample]
    if not pad_channels:
        return x
    out = np.zeros((*x.shape[:3], x.shape[3] + 2 * pad_channels), dtype=x.dtype)  # np.pad: 10x slower at batch 1
    out[..., pad_channels:pad_channels + x.shape[3]] = x
    return out


def _pad(x: np.ndarray, padding: list[int], value: float) -> np.ndarray:
    if not any(padding):
        return x
    return np.pad(x, ((0, 0), (padding[0],) * 2, (padding[1],) * 2, (0, 0)), constant_values=value)


def _window_sum(x: np.ndarray, kernel: list[int], stride: list[int]) -> np.ndarray:
    """Sum of each pooling window, one fp32 addition per window cell in row-major order."""
    if x.shape[1] < kernel[0] or x.shape[2] < kernel[1]:
        raise ValueError(f"a {kernel} pooling window does not fit a {x.shape[1]}x{x.shape[2]} input")
    out_h = (x.shape[1] - kernel[0]) // stride[0] + 1
    out_w = (x.shape[2] - kernel[1]) // stride[1] + 1
    out = np.empty((x.shape[0], out_h, out_w, x.shape[3]), dtype=np.float32)
    window_sum_kernel(x.astype(np.float32, copy=False), kernel[0], kernel[1], stride[0], stride[1], out)
    return out


@njit(cache=True, parallel=True)
def window_sum_kernel(x, rows, cols, stride_h, stride_w, out):
    """One Numba pass: per window the first cell, then each further cell added in row-major order
    (one numpy pass per cell made a global pool 64 array operations); images in parallel."""
    batch, out_h, out_w, channels = out.shape
    for b in prange(batch):
        for oh in range(out_h):
            for ow in range(out_w):
                total = out[b, oh, ow]
                total[:] = x[b, oh * stride_h, ow * stride_w]
                for i in range(rows):
                    for j in range(cols):
                        if i or j:
                            cell = x[b, oh * stride_h + i, ow * stride_w + j]
                            for c in range(channels):
                                total[c] += cell[c]


def _windows(x: np.ndarray, kernel: list[int], stride: list[int]) -> np.ndarray:
    if x.shape[1] < kernel[0] or x.shape[2] < kernel[1]:
        raise ValueError(f"a {kernel} pooling window does not fit a {x.shape[1]}x{x.shape[2]} input")
    return sliding_window_view(x, tuple(kernel), axis=(1, 2))[:, :: stride[0], :: stride[1]]
