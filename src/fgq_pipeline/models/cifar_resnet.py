"""The CIFAR-10 ResNets of He et al. (2016), laid out so the published pretrained checkpoints
(saved from DataParallel, hence the ``module.`` prefix that load_weights strips) load strictly:
attribute names match their keys (conv1, bn1, layer1.0.conv1, ..., linear).

Every conv, linear and ReLU is a module rather than a functional call so that quantization can
swap layers by name and hooks see each activation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

STAGE_CHANNELS = (16, 32, 64)
LAYERS_OUTSIDE_BLOCKS = 2  # the stem conv and the linear head
LAYERS_PER_BLOCK = 2
CIFAR_INPUT_CHANNELS = 3


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """No bias: the batch norm that follows supplies the shift."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class ChannelPadShortcut(nn.Module):
    """Option-A shortcut: subsample by 2 and zero-pad the new channels, with no parameters, which is
    why the checkpoints hold no shortcut keys."""

    def __init__(self, out_channels: int):
        super().__init__()
        self.pad_each_side = out_channels // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.pad_each_side
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad))


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN, plus the shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()  # not in-place: activation hooks must see the batch-norm output
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        reshapes = stride != 1 or in_channels != out_channels
        self.shortcut = ChannelPadShortcut(out_channels) if reshapes else nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Depth 6n+2: a 3x3 stem, three stages of n blocks at 16/32/64 channels (the last two
    halving the resolution), global average pooling and a linear classifier."""

    def __init__(self, depth: int = 20, num_classes: int = 10):
        super().__init__()
        blocks_layers = depth - LAYERS_OUTSIDE_BLOCKS
        per_stage = len(STAGE_CHANNELS) * LAYERS_PER_BLOCK
        if depth < per_stage + LAYERS_OUTSIDE_BLOCKS or blocks_layers % per_stage:
            raise ValueError(
                f"depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...), got {depth!r}"
            )
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes!r}")
        blocks_per_stage = blocks_layers // per_stage
        first = STAGE_CHANNELS[0]
        self.depth = depth
        self.conv1 = conv3x3(CIFAR_INPUT_CHANNELS, first)
        self.bn1 = nn.BatchNorm2d(first)
        self.relu = nn.ReLU()
        in_channels = first
        for index, channels in enumerate(STAGE_CHANNELS, start=1):
            stride = 1 if index == 1 else 2
            blocks = []
            for block in range(blocks_per_stage):
                blocks.append(BasicBlock(in_channels, channels, stride if block == 0 else 1))
                in_channels = channels
            setattr(self, f"layer{index}", nn.Sequential(*blocks))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(self.flatten(self.pool(out)))
