"""scikit-learn's 8x8 digits as the embedded default dataset: small enough to train in seconds on a
CPU, so the whole pipeline can be exercised without downloads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset

from fgq_pipeline.data.base import (
    InMemoryImageDataModule,
    RandomCropFlipDataset,
    seeded_subset,
)
from fgq_pipeline.data.npz import load_npz_split, save_npz_split

DIGITS_MAX_VALUE = 16
DIGITS_NUM_CLASSES = 10
DIGITS_IMAGE_SIZE = 8
NORMALISE_MEAN = 0.5
NORMALISE_STD = 0.5
BACKGROUND_VALUE = (0.0 - NORMALISE_MEAN) / NORMALISE_STD  # where a raw 0 pixel lands
MAX_SHIFT_PIXELS = 1
SPLIT_FILES = {"train": "train.npz", "test": "test.npz"}


def prepare_digits(root: str | Path, test_fraction: float = 0.3, seed: int = 0) -> dict[str, int]:
    """Write stratified train/test npz splits so digits follows the same layout as CIFAR-10."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction!r}")
    digits = load_digits()
    images = digits.images.astype(np.uint8)[..., np.newaxis]
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    root = Path(root)
    save_npz_split(root / SPLIT_FILES["train"], x_train, y_train)
    save_npz_split(root / SPLIT_FILES["test"], x_test, y_test)
    return {"train": len(y_train), "test": len(y_test), "classes": DIGITS_NUM_CLASSES}


def normalise_digits(x: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) in 0..16 -> float (N, C, H, W) in [-1, 1], so the first layer sees signed
    input as it does on normalised CIFAR-10."""
    scaled = torch.from_numpy(x).permute(0, 3, 1, 2).float() / DIGITS_MAX_VALUE
    return (scaled - NORMALISE_MEAN) / NORMALISE_STD


class DigitsDataModule(InMemoryImageDataModule):
    """Serves the digits npz splits, creating them on first use so a fresh checkout just works."""

    def __init__(
        self,
        root: str | Path = "data/digits",
        batch_size: int = 64,
        eval_batch_size: int = 512,
        num_workers: int = 0,
        subset_train: int | None = None,
        subset_test: int | None = None,
        test_fraction: float = 0.3,
        seed: int = 0,
        augment: bool = True,
    ):
        super().__init__(
            root, batch_size, eval_batch_size, num_workers, subset_train, subset_test, seed, augment
        )
        self.test_fraction = test_fraction

    @property
    def num_classes(self) -> int:
        return DIGITS_NUM_CLASSES

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (1, DIGITS_IMAGE_SIZE, DIGITS_IMAGE_SIZE)

    def prepare_data(self) -> None:
        if not all((self.root / name).is_file() for name in SPLIT_FILES.values()):
            prepare_digits(self.root, self.test_fraction, self.seed)

    def _load_split(self, split: str, subset: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Load one split; a subset keeps at most the first ``subset`` of a seeded permutation."""
        x, y = load_npz_split(self.root / SPLIT_FILES[split])
        if subset is not None:
            keep = seeded_subset(len(y), subset, self.seed)
            x, y = x[keep], y[keep]
        return normalise_digits(x), torch.from_numpy(y)

    def describe_transform(self, augment: bool) -> str:
        return f"random shift by up to {MAX_SHIFT_PIXELS} pixel" if augment else "no augmentation"

    def _augmented(self, images: torch.Tensor, labels: torch.Tensor) -> Dataset:
        """Shifts by up to one pixel; no flips, since a mirrored digit can be another digit."""
        return RandomCropFlipDataset(images, labels, MAX_SHIFT_PIXELS, BACKGROUND_VALUE, flip=False)
