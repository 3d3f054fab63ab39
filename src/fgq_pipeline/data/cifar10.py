"""CIFAR-10 from npz splits, preprocessed exactly as the published pretrained CIFAR ResNets were
trained, so their reference accuracies reproduce before any quantization.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.datasets import CIFAR10

from fgq_pipeline.data.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    InMemoryImageDataModule,
    RandomCropFlipDataset,
    seeded_subset,
)
from fgq_pipeline.data.npz import load_npz_split, save_npz_split

CIFAR10_NUM_CLASSES = 10
CIFAR10_IMAGE_SHAPE = (32, 32, 3)  # as stored: H, W, C
CIFAR10_MAX_VALUE = 255
CROP_PADDING_PIXELS = 4
SPLIT_FILES = {"train": "train.npz", "test": "test.npz"}


def download_cifar10(root: str | Path) -> None:
    """Fetch the official CIFAR-10 with torchvision and store it in the npz layout read here."""
    root = Path(root)
    for split, is_train in (("train", True), ("test", False)):
        dataset = CIFAR10(root, train=is_train, download=True)
        labels = np.asarray(dataset.targets, dtype=np.int64)
        save_npz_split(root / SPLIT_FILES[split], dataset.data, labels)


class Cifar10DataModule(InMemoryImageDataModule):
    """CIFAR-10 held in memory: scaled to [0, 1], normalised, and for training padded by 4,
    randomly cropped back to 32x32 and randomly flipped, as the reference checkpoints were trained.
    """

    def __init__(
        self,
        root: str | Path,
        batch_size: int = 128,
        eval_batch_size: int = 500,
        num_workers: int = 0,
        subset_train: int | None = None,
        subset_test: int | None = None,
        seed: int = 0,
        augment: bool = True,
        download: bool = False,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ):
        super().__init__(
            root, batch_size, eval_batch_size, num_workers, subset_train, subset_test, seed, augment
        )
        mean, std = tuple(mean), tuple(std)  # Hydra passes ListConfigs
        channels = CIFAR10_IMAGE_SHAPE[-1]
        if len(mean) != channels or len(std) != channels or min(std) <= 0:
            raise ValueError(
                f"mean and std need one value per RGB channel and std must be positive, "
                f"got mean={mean!r} std={std!r}"
            )
        self.download = download
        self.mean = torch.tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).reshape(-1, 1, 1)

    @property
    def num_classes(self) -> int:
        return CIFAR10_NUM_CLASSES

    @property
    def input_shape(self) -> tuple[int, int, int]:
        height, width, channels = CIFAR10_IMAGE_SHAPE
        return (channels, height, width)

    def prepare_data(self) -> None:
        missing = [name for name in SPLIT_FILES.values() if not (self.root / name).is_file()]
        if not missing:
            return
        if not self.download:
            where = self.root if self.root.is_dir() else f"{self.root} (no such directory)"
            raise FileNotFoundError(
                f"CIFAR-10 splits {missing} are not in {where}; set data.download=true to fetch "
                "CIFAR-10 with torchvision, or point data.root at a directory holding "
                "train.npz and test.npz"
            )
        download_cifar10(self.root)

    def _load_split(self, split: str, subset: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Test subsets are the first images, keeping the official order; train subsets are
        seeded random draws, so a small one still covers every class."""
        path = self.root / SPLIT_FILES[split]
        x, y = load_npz_split(path)
        _check_cifar10_arrays(path, x, y)
        if subset is not None:
            keep = seeded_subset(len(y), subset, self.seed) if split == "train" else slice(subset)
            x, y = x[keep], y[keep]
        return self._normalise(x), torch.from_numpy(y)

    def _normalise(self, x: np.ndarray) -> torch.Tensor:
        """uint8 (N, H, W, C) -> float (N, C, H, W), in the order of ops of torchvision's
        ToTensor + Normalize so results match the reference preprocessing bit for bit."""
        images = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
        return images.float().div_(CIFAR10_MAX_VALUE).sub_(self.mean).div_(self.std)

    def describe_transform(self, augment: bool) -> str:
        if not augment:
            return "no augmentation"
        height, width, _ = CIFAR10_IMAGE_SHAPE
        return f"pad {CROP_PADDING_PIXELS} + random {height}x{width} crop + random flip"

    def _augmented(self, images: torch.Tensor, labels: torch.Tensor) -> Dataset:
        black = torch.zeros_like(self.mean).sub_(self.mean).div_(self.std)
        return RandomCropFlipDataset(images, labels, CROP_PADDING_PIXELS, black, flip=True)


def _check_cifar10_arrays(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    """Catch a root pointing at another dataset before it turns into a shape error in a conv."""
    if x.shape[1:] != CIFAR10_IMAGE_SHAPE:
        raise ValueError(
            f"{path} holds images of shape {x.shape[1:]}, not CIFAR-10's {CIFAR10_IMAGE_SHAPE} "
            "(H, W, RGB); point data.root at a CIFAR-10 directory"
        )
    if len(y) and (y.min() < 0 or y.max() >= CIFAR10_NUM_CLASSES):
        raise ValueError(
            f"{path} has labels from {y.min()} to {y.max()}, outside CIFAR-10's "
            f"0..{CIFAR10_NUM_CLASSES - 1}; point data.root at a CIFAR-10 directory"
        )
