"""One seed for every random source, so the same params give the same metrics."""

from __future__ import annotations

import pytorch_lightning as pl
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, and make torch pick deterministic kernels."""
    pl.seed_everything(seed, workers=True, verbose=False)
    torch.use_deterministic_algorithms(True, warn_only=True)
