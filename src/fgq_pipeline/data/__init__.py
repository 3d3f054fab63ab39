"""Datasets (npz splits, image folders) and the Lightning data modules that serve them."""

from fgq_pipeline.data.cifar10 import Cifar10DataModule, download_cifar10
from fgq_pipeline.data.digits import DigitsDataModule, prepare_digits
from fgq_pipeline.data.imagefolder import ImageFolderDataModule

__all__ = [
    "Cifar10DataModule",
    "DigitsDataModule",
    "ImageFolderDataModule",
    "download_cifar10",
    "prepare_digits",
]
