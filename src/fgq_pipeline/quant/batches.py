"""The images of a calibration set, as every pass over it (repairs, GPTQ, reconstruction) feeds them."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import nn

from ..devices import model_device


def batch_images(batches: Iterable, model: nn.Module) -> Iterator[torch.Tensor]:
    """The images of ``batches`` ((images, labels) pairs or bare tensors), on ``model``'s device;
    ValueError once the set turns out empty."""
    device, count = model_device(model), 0
    for batch in batches:
        count += 1
        yield (batch[0] if isinstance(batch, (list, tuple)) else batch).to(device)
    if count == 0:
        raise ValueError("the calibration set is empty: give it at least one batch of images")
