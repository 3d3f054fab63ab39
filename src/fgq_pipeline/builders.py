"""Objects an experiment is made of, built from its config: the data module and the FP32 model.

DVC stages and the Hydra apps both go through these, so one config means one experiment
whichever way it is run. Relative paths in the config are relative to the project root.
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .devices import resolve_device
from .models import load_weights
from .project import resolve_path

CONFIG_ONLY_KEYS = ("name", "checkpoint")  # describe the object in a config group, not constructor arguments


def _instantiate(group: DictConfig, **replace):
    """Plain lists and dicts as arguments (``_convert_="all"``): objects that save them, as a
    datamodule's hyperparameters in each Lightning checkpoint, must not need omegaconf to load."""
    fields = {k: v for k, v in OmegaConf.to_container(group, resolve=True).items() if k not in CONFIG_ONLY_KEYS}
    return instantiate({**fields, **replace}, _convert_="all")


def build_datamodule(cfg: DictConfig) -> pl.LightningDataModule:
    datamodule = _instantiate(cfg.data, root=str(resolve_path(cfg.data.root)))
    datamodule.setup()
    return datamodule


def build_model(cfg: DictConfig, load_checkpoint: bool = True) -> torch.nn.Module:
    """The FP32 model from ``cfg.model``, with its weights loaded unless told otherwise, on ``cfg.device``
    (quantization, calibration and evaluation follow it there).

    A torchvision model with ``model.weights`` and no ``model.checkpoint`` comes pretrained.
    """
    model = _instantiate(cfg.model)
    weights = fp32_weights_file(cfg) if load_checkpoint else None
    if weights is not None:
        load_weights(model, weights)
    return model.to(resolve_device(cfg.device)).eval()


def fp32_weights_file(cfg: DictConfig) -> Path | None:
    """The file the FP32 weights come from: ``model.checkpoint`` if given, else the weights the
    baseline stage trained; None where torchvision supplies them (``model.weights``, no checkpoint)."""
    if cfg.model.get("weights") and not cfg.model.get("checkpoint"):
        return None
    path = resolve_path(cfg.model.get("checkpoint") or cfg.paths.fp32_weights)
    if not path.exists():
        raise FileNotFoundError(
            f"FP32 weights {path} do not exist: run `dvc repro baseline` (or `fgq-train`) to train them, "
            "or set model.checkpoint=PATH"
        )
    return path
