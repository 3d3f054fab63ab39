"""scikit-learn's 8x8 digits as the embedded default dataset: small enough to train in seconds on a
CPU, so the whole pipeline can be exercised without downloads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

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


class RandomShiftDataset(Dataset):
    """Images translated by up to ``max_shift`` pixels, padding with the normalised background.

    Padding once up front makes each item a cheap crop; offsets come from torch's global RNG so
    ``pl.seed_everything`` (and Lightning's per-worker seeding) makes the augmentation reproducible.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, max_shift: int, fill: float):
        self.padded = torch.nn.functional.pad(images, (max_shift,) * 4, value=fill)
        self.labels = labels
        self.height, self.width = images.shape[-2:]
        self.max_shift = max_shift

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        top, left = torch.randint(0, 2 * self.max_shift + 1, (2,)).tolist()
        crop = self.padded[index, :, top : top + self.height, left : left + self.width]
        return crop, self.labels[index]


class DigitsDataModule(pl.LightningDataModule):
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
        super().__init__()
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value!r}")
        for name, value in (("subset_train", subset_train), ("subset_test", subset_test)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be None (whole split) or at least 1, got {value!r}")
        self.save_hyperparameters()
        self.root = Path(root)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.subset_train = subset_train
        self.subset_test = subset_test
        self.test_fraction = test_fraction
        self.seed = seed
        self.augment = augment
        self.train_images: torch.Tensor | None = None
        self.train_labels: torch.Tensor | None = None
        self.test_images: torch.Tensor | None = None
        self.test_labels: torch.Tensor | None = None

    @property
    def num_classes(self) -> int:
        return DIGITS_NUM_CLASSES

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (1, DIGITS_IMAGE_SIZE, DIGITS_IMAGE_SIZE)

    @property
    def num_train_images(self) -> int:
        self._ensure_setup()
        return len(self.train_labels)

    @property
    def num_test_images(self) -> int:
        self._ensure_setup()
        return len(self.test_labels)

    def prepare_data(self) -> None:
        if not all((self.root / name).is_file() for name in SPLIT_FILES.values()):
            prepare_digits(self.root, self.test_fraction, self.seed)

    def setup(self, stage: str | None = None) -> None:
        if self.train_images is not None:
            return
        self.prepare_data()
        self.train_images, self.train_labels = self._load_split("train", self.subset_train)
        self.test_images, self.test_labels = self._load_split("test", self.subset_test)

    def train_dataloader(self) -> DataLoader:
        self._ensure_setup()
        dataset = self._training_dataset(self.augment)
        return self._loader(dataset, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def test_dataloader(self) -> DataLoader:
        self._ensure_setup()
        dataset = TensorDataset(self.test_images, self.test_labels)
        return self._loader(dataset, self.eval_batch_size, shuffle=False)

    def calibration_dataloader(self, num_images: int, augment: bool, seed: int) -> DataLoader:
        """A seeded random subset of the training split, so calibration never sees test images."""
        self._ensure_setup()
        available = len(self.train_labels)
        if not 1 <= num_images <= available:
            raise ValueError(
                f"num_images must be between 1 and the {available} training images, "
                f"got {num_images!r}"
            )
        generator = torch.Generator().manual_seed(seed)
        indices = torch.randperm(available, generator=generator)[:num_images].tolist()
        dataset = Subset(self._training_dataset(augment), indices)
        return self._loader(dataset, self.eval_batch_size, shuffle=False)

    def _ensure_setup(self) -> None:
        if self.train_images is None:
            self.setup()

    def _load_split(self, split: str, subset: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Load one split; a subset keeps at most the first ``subset`` of a seeded permutation."""
        x, y = load_npz_split(self.root / SPLIT_FILES[split])
        if subset is not None:
            keep = np.random.default_rng(self.seed).permutation(len(y))[:subset]
            x, y = x[keep], y[keep]
        return normalise_digits(x), torch.from_numpy(y)

    def _training_dataset(self, augment: bool) -> Dataset:
        if augment:
            return RandomShiftDataset(
                self.train_images, self.train_labels, MAX_SHIFT_PIXELS, BACKGROUND_VALUE
            )
        return TensorDataset(self.train_images, self.train_labels)

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )
