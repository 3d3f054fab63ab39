"""The float32 graph operations of the integer path against the torch modules they stand for."""

import numpy as np
import pytest
import torch
from torch import nn

from fgq_pipeline.kernels import graph_ops as ops


def nhwc(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())


@pytest.fixture
def x():
    return torch.randn(2, 5, 9, 11, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kernel, stride, padding", [(2, 2, 0), (3, 2, 1), ((3, 2), (1, 2), (1, 0))])
def test_max_pool_matches_torch(x, kernel, stride, padding):
    pair = nn.modules.utils._pair
    out = ops.max_pool(nhwc(x), list(pair(kernel)), list(pair(stride)), list(pair(padding)))
    np.testing.assert_array_equal(out, nhwc(nn.MaxPool2d(kernel, stride, padding)(x)))


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("kernel, stride, padding", [(2, 2, 0), (3, 2, 1), ((3, 2), (1, 2), (1, 0))])
def test_avg_pool_matches_torch(x, kernel, stride, padding, count_include_pad):
    pair = nn.modules.utils._pair
    out = ops.avg_pool(nhwc(x), list(pair(kernel)), list(pair(stride)), list(pair(padding)), count_include_pad)
    expected = nn.AvgPool2d(kernel, stride, padding, count_include_pad=count_include_pad)(x)
    np.testing.assert_allclose(out, nhwc(expected), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("size", [(1, 1), (6, 6), (4, 3), (9, 11), (13, 2)])
def test_adaptive_avg_pool_matches_torch(x, size):
    out = ops.adaptive_avg_pool(nhwc(x), list(size))
    np.testing.assert_allclose(out, nhwc(nn.AdaptiveAvgPool2d(size)(x)), rtol=1e-6, atol=1e-6)


def test_flatten_keeps_torch_s_channel_major_order(x):
    np.testing.assert_array_equal(ops.flatten(nhwc(x)), torch.flatten(x, 1).numpy())
    pooled = x.mean((2, 3), keepdim=True)
    np.testing.assert_array_equal(ops.flatten(nhwc(pooled)), torch.flatten(pooled, 1).numpy())


def test_subsample_pad_is_the_option_a_shortcut(x):
    expected = torch.nn.functional.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 3, 3))
    np.testing.assert_array_equal(ops.subsample_pad(nhwc(x), 2, 3), nhwc(expected))
