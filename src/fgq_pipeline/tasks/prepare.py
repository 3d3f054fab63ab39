"""The dataset's splits made available and fingerprinted: the manifest later stages depend on."""

from __future__ import annotations

from omegaconf import DictConfig

from ..builders import build_datamodule
from ..data.fingerprint import directory_fingerprint
from ..project import resolve_path
from ..tracking import RunLog


def prepare_data(cfg: DictConfig, log: RunLog) -> dict:
    datamodule = build_datamodule(cfg)  # writes the splits where the dataset is made, not found
    return {
        "dataset": cfg.data.name,
        "root": str(cfg.data.root),  # as configured: the lock file stays the same in every clone
        "train_images": datamodule.num_train_images,
        "test_images": datamodule.num_test_images,
        "classes": datamodule.num_classes,
        "fingerprint": directory_fingerprint(resolve_path(cfg.data.root)),
    }
