"""ImageNet-style image folders (``root/train/<class>/*``, ``root/val/<class>/*``), decoded on
the fly with the standard torchvision preprocessing that ImageNet checkpoints expect.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset, Subset
from torchvision import transforms
from torchvision.datasets import ImageFolder

from fgq_pipeline.data.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageDataModule,
    seeded_subset,
)

SPLIT_DIRS = {"train": "train", "test": "val"}


def load_rgb_image(path: str) -> Image.Image:
    """Decode one file as RGB, naming the file when it cannot be read (PIL often does not)."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as error:
        raise ValueError(
            f"image {path} cannot be decoded ({error}); replace or delete the file"
        ) from error


class TransformedDataset(Dataset):
    """One scanned folder served with different transforms (training, evaluation, calibration)
    without listing a directory of a million files more than once."""

    def __init__(self, dataset: Dataset, transform: Callable):
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, label = self.dataset[index]
        return self.transform(image), label


class ImageFolderDataModule(ImageDataModule):
    """Train/val image folders: evaluation resizes and centre-crops; training takes a random
    resized crop and a random flip. Subsets of either split are seeded random draws, because
    folder order is sorted by class and its first images would cover only a few classes.
    """

    def __init__(
        self,
        root: str | Path,
        batch_size: int = 64,
        eval_batch_size: int = 100,
        num_workers: int = 2,
        image_size: int = 224,
        resize: int = 256,
        subset_train: int | None = None,
        subset_test: int | None = None,
        seed: int = 0,
        augment: bool = True,
    ):
        super().__init__(
            root, batch_size, eval_batch_size, num_workers, subset_train, subset_test, seed, augment
        )
        if not 1 <= image_size <= resize:
            raise ValueError(
                f"need 1 <= image_size <= resize (the centre crop is taken from the resized "
                f"image), got image_size={image_size!r} resize={resize!r}"
            )
        self.image_size = image_size
        self.resize = resize
        self.folders: dict[str, Dataset] = {}
        self.classes: list[str] = []

    @property
    def num_classes(self) -> int:
        self._ensure_setup()
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    def _load(self) -> None:
        scanned = {split: _scan(self.root / name) for split, name in SPLIT_DIRS.items()}
        train, test = scanned["train"], scanned["test"]
        if train.classes != test.classes:
            raise ValueError(
                f"{self.root / SPLIT_DIRS['train']} and {self.root / SPLIT_DIRS['test']} hold "
                f"different class folders ({len(train.classes)} vs {len(test.classes)}); "
                "both need one folder per class, with the same names"
            )
        self.classes = train.classes
        subsets = {"train": self.subset_train, "test": self.subset_test}
        self.folders = {
            split: folder if subsets[split] is None
            else Subset(folder, seeded_subset(len(folder), subsets[split], self.seed).tolist())
            for split, folder in scanned.items()
        }

    def describe_transform(self, augment: bool) -> str:
        if augment:
            return f"random resized crop to {self.image_size} + random flip"
        return f"resize to {self.resize} + centre crop {self.image_size}, as evaluated"

    def _training_dataset(self, augment: bool) -> Dataset:
        transform = self._training_transform() if augment else self._eval_transform()
        return TransformedDataset(self.folders["train"], transform)

    def _test_dataset(self) -> Dataset:
        return TransformedDataset(self.folders["test"], self._eval_transform())

    def _training_transform(self) -> Callable:
        return transforms.Compose([
            transforms.RandomResizedCrop(self.image_size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])

    def _eval_transform(self) -> Callable:
        return transforms.Compose([
            transforms.Resize(self.resize),
            transforms.CenterCrop(self.image_size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])


def _scan(directory: Path) -> ImageFolder:
    if not directory.is_dir():
        raise FileNotFoundError(
            f"image folder {directory} does not exist; point data.root at a directory holding "
            "train/<class>/<images> and val/<class>/<images> (the ImageNet layout)"
        )
    return ImageFolder(directory, loader=load_rgb_image)
