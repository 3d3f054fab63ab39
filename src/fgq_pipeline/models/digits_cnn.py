"""A small all-conv-then-linear classifier for 8x8 digits, shaped like the CIFAR networks it
stands in for (3x3 convs with batch norm, pooling, a global average and one linear head).

Every conv, linear and ReLU is a module rather than a functional call so that quantization can
swap layers by name.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

DIGITS_INPUT_CHANNELS = 1


def conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    """3x3 conv without bias, since the batch norm that follows supplies the shift."""
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),  # not in-place: activation hooks must see the batch-norm output unchanged
    ]


class DigitsCNN(nn.Module):
    """conv-conv-pool-conv-pool, global average pool, linear classifier (8x8 -> 4x4 -> 2x2)."""

    def __init__(self, channels: Sequence[int] = (32, 64, 64), num_classes: int = 10):
        super().__init__()
        channels = tuple(channels)
        if len(channels) != 3 or any(int(c) != c or c < 1 for c in channels):
            raise ValueError(
                f"channels must be three positive integers (one per conv), got {channels!r}"
            )
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes!r}")
        first, second, third = channels
        self.features = nn.Sequential(
            *conv_bn_relu(DIGITS_INPUT_CHANNELS, first),
            *conv_bn_relu(first, second),
            nn.MaxPool2d(2),
            *conv_bn_relu(second, third),
            nn.MaxPool2d(2),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(third, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))
