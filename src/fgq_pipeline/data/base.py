"""The data interface every pipeline stage relies on, written once so datasets only differ in
where their images come from and how they are normalised and augmented.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

# ImageNet's channel statistics: what most published checkpoints, even CIFAR ones, expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def seeded_subset(total: int, size: int, seed: int) -> np.ndarray:
    """Indices of at most ``size`` of ``total`` items, the same for the same seed on every run."""
    return np.random.default_rng(seed).permutation(total)[:size]


class ImageDataModule(pl.LightningDataModule, ABC):
    """Train/test loaders plus a seeded calibration subset of the training split.

    Calibration draws from the training split only, so PTQ never peeks at the images it is
    scored on.
    """

    def __init__(
        self,
        root: str | Path,
        batch_size: int,
        eval_batch_size: int,
        num_workers: int,
        subset_train: int | None,
        subset_test: int | None,
        seed: int,
        augment: bool,
    ):
        super().__init__()
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value!r}")
        for name, value in (("subset_train", subset_train), ("subset_test", subset_test)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be None (whole split) or at least 1, got {value!r}")
        if num_workers < 0:
            raise ValueError(
                f"num_workers must be 0 (load in this process) or more, got {num_workers!r}"
            )
        self.save_hyperparameters()
        self.root = Path(root)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.subset_train = subset_train
        self.subset_test = subset_test
        self.seed = seed
        self.augment = augment
        self._loaded = False
        self._held_out: tuple[int, int] | None = None  # hold_out()'s (num_images, seed)

    @property
    @abstractmethod
    def num_classes(self) -> int: ...

    @property
    @abstractmethod
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one image as the model receives it."""

    @abstractmethod
    def _load(self) -> None:
        """Read both splits (or index them) once; called by the first ``setup``."""

    @abstractmethod
    def describe_transform(self, augment: bool) -> str:
        """What training images go through with ``augment`` on or off, in a few words, for run logs
        and the record saved with trained weights."""

    @abstractmethod
    def _training_dataset(self, augment: bool) -> Dataset: ...

    @abstractmethod
    def _test_dataset(self) -> Dataset: ...

    @property
    def num_train_images(self) -> int:
        self._ensure_setup()
        return len(self._training_dataset(augment=False))

    @property
    def num_test_images(self) -> int:
        self._ensure_setup()
        return len(self._test_dataset())

    def setup(self, stage: str | None = None) -> None:
        if self._loaded:
            return
        self.prepare_data()
        self._load()
        self._loaded = True

    def train_dataloader(self) -> DataLoader:
        self._ensure_setup()
        dataset = self._training_dataset(self.augment)
        if self._held_out is not None:
            held_out = set(self.holdout_dataloader(*self._held_out).dataset.indices)
            dataset = Subset(dataset, [i for i in range(self.num_train_images) if i not in held_out])
        return self._loader(dataset, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        if self._held_out is not None:
            return self.holdout_dataloader(*self._held_out)
        return self.test_dataloader()

    def hold_out(self, num_images: int, seed: int) -> None:
        """Train without the :meth:`holdout_dataloader` images from now on, and validate on them: a
        training job's settings (a fine-tune's learning rate, its epochs) are then chosen on images it
        neither trained nor calibrated on, not on the test set."""
        self.holdout_dataloader(num_images, seed)  # a bad number of images fails here, not in training
        self._held_out = (num_images, seed)

    def test_dataloader(self) -> DataLoader:
        self._ensure_setup()
        return self._loader(self._test_dataset(), self.eval_batch_size, shuffle=False)

    def calibration_dataloader(self, num_images: int, augment: bool, seed: int) -> DataLoader:
        """A seeded random subset of the training split, so calibration never sees test images."""
        available = self.num_train_images
        if not 1 <= num_images <= available:
            raise ValueError(
                f"num_images must be between 1 and the {available} training images, "
                f"got {num_images!r}"
            )
        generator = torch.Generator().manual_seed(seed)
        indices = torch.randperm(available, generator=generator)[:num_images].tolist()
        dataset = Subset(self._training_dataset(augment), indices)
        return self._loader(dataset, self.eval_batch_size, shuffle=False)

    def holdout_dataloader(self, num_images: int, seed: int) -> DataLoader:
        """Un-augmented training images from the far end of calibration's seeded order: a validation
        split for choosing post-training settings that a calibration set of up to the remaining
        images never draws from, so the test set stays unseen until the settings are fixed."""
        available = self.num_train_images
        if not 1 <= num_images < available:
            raise ValueError(
                f"num_images must be between 1 and {available - 1} (leaving training images to "
                f"calibrate on), got {num_images!r}"
            )
        generator = torch.Generator().manual_seed(seed)
        indices = torch.randperm(available, generator=generator)[available - num_images:].tolist()
        dataset = Subset(self._training_dataset(augment=False), indices)
        return self._loader(dataset, self.eval_batch_size, shuffle=False)

    def _ensure_setup(self) -> None:
        if not self._loaded:
            self.setup()

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )


class InMemoryImageDataModule(ImageDataModule):
    """Both splits decoded once into normalised float tensors: for small datasets, where holding
    them beats decoding every epoch. Subclasses read a split and say how to augment it.
    """

    train_images: torch.Tensor | None = None
    train_labels: torch.Tensor | None = None
    test_images: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None

    @abstractmethod
    def _load_split(self, split: str, subset: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised float images (N, C, H, W) and int64 labels of ``split`` ("train"/"test")."""

    @abstractmethod
    def _augmented(self, images: torch.Tensor, labels: torch.Tensor) -> Dataset: ...

    def _load(self) -> None:
        self.train_images, self.train_labels = self._load_split("train", self.subset_train)
        self.test_images, self.test_labels = self._load_split("test", self.subset_test)

    def _training_dataset(self, augment: bool) -> Dataset:
        if augment:
            return self._augmented(self.train_images, self.train_labels)
        return TensorDataset(self.train_images, self.train_labels)

    def _test_dataset(self) -> Dataset:
        return TensorDataset(self.test_images, self.test_labels)


class RandomCropFlipDataset(Dataset):
    """Random crop of each image padded by ``padding`` pixels, optionally flipped left-right.

    ``fill`` is the normalised value of a black pixel (a scalar or one value per channel), so
    padding matches padding the raw image before normalisation. Offsets come from torch's
    global RNG so ``pl.seed_everything`` (and Lightning's per-worker seeding) makes the
    augmentation reproducible. Padding per item keeps memory at one copy of the split.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        padding: int,
        fill: float | torch.Tensor,
        flip: bool,
    ):
        if padding < 0:
            raise ValueError(f"padding must be 0 or more pixels, got {padding!r}")
        self.images = images
        self.labels = labels
        self.padding = padding
        self.fill = torch.as_tensor(fill, dtype=images.dtype).reshape(-1, 1, 1)
        self.flip = flip

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]
        channels, height, width = image.shape
        pad = self.padding
        canvas = self.fill.expand(channels, height + 2 * pad, width + 2 * pad).clone()
        canvas[:, pad : pad + height, pad : pad + width] = image
        top, left = torch.randint(0, 2 * pad + 1, (2,)).tolist()
        crop = canvas[:, top : top + height, left : left + width]
        if self.flip and torch.rand(()) < 0.5:
            crop = crop.flip(-1)
        return crop, self.labels[index]
