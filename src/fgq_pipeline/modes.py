"""Temporary train/eval modes for passes over a model that must leave it as they found it."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(model: nn.Module, train: Iterable[nn.Module] = ()) -> Iterator[None]:
    """Run the body with ``model`` in eval mode, except the ``train`` modules, which train.

    On exit, even on an exception, every module gets its own previous mode back: ``model.train(flag)``
    would flatten a model whose submodules were in mixed modes (e.g. BatchNorm frozen for fine-tuning).
    """
    train = list(train)
    previous = {module: module.training for module in (*model.modules(), *train)}
    model.eval()
    for module in train:
        module.train()
    try:
        yield
    finally:
        for module, training in previous.items():
            module.training = training
