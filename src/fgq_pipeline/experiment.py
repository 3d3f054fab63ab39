"""Objects an experiment is made of, built from its config: data, FP32 model, quant configs.

DVC stages and the Hydra apps both go through these, so one config means one experiment
whichever way it is run. Relative paths in the config are relative to the project root.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .atomic import write_text_atomically
from .models import load_weights
from .quant import QuantConfig

CONFIG_ONLY_KEYS = ("name", "checkpoint")  # describe the object in a config group, not constructor arguments
SOURCE_CHECKOUT = Path(__file__).resolve().parents[2]  # the repository of an editable install


def project_root() -> Path:
    """$FGQ_PROJECT_ROOT, else the nearest directory above the cwd holding dvc.yaml, else this checkout."""
    if "FGQ_PROJECT_ROOT" in os.environ:
        return Path(os.environ["FGQ_PROJECT_ROOT"]).resolve()
    cwd = Path.cwd().resolve()
    return next((d for d in (cwd, *cwd.parents) if (d / "dvc.yaml").exists()), SOURCE_CHECKOUT)


def resolve_path(path: str | Path) -> Path:
    path = Path(path).expanduser()
    return path if path.is_absolute() else project_root() / path


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, and make torch pick deterministic kernels."""
    pl.seed_everything(seed, workers=True, verbose=False)
    torch.use_deterministic_algorithms(True, warn_only=True)


def _instantiate(group: DictConfig, **replace):
    fields = {k: v for k, v in OmegaConf.to_container(group, resolve=True).items() if k not in CONFIG_ONLY_KEYS}
    return instantiate({**fields, **replace})


def build_datamodule(cfg: DictConfig) -> pl.LightningDataModule:
    datamodule = _instantiate(cfg.data, root=str(resolve_path(cfg.data.root)))
    datamodule.setup()
    return datamodule


def build_model(cfg: DictConfig, load_checkpoint: bool = True) -> torch.nn.Module:
    """The FP32 model from ``cfg.model``, with its weights loaded unless told otherwise.

    A torchvision model with ``model.weights`` and no ``model.checkpoint`` comes pretrained.
    """
    model = _instantiate(cfg.model)
    pretrained_by_torchvision = cfg.model.get("weights") and not cfg.model.get("checkpoint")
    if load_checkpoint and not pretrained_by_torchvision:
        load_weights(model, fp32_weights_path(cfg))
    return model.eval()


def fp32_weights_path(cfg: DictConfig) -> Path:
    """``model.checkpoint`` if given, else the weights the baseline stage trained."""
    path = resolve_path(cfg.model.get("checkpoint") or cfg.paths.fp32_weights)
    if not path.exists():
        raise FileNotFoundError(
            f"FP32 weights {path} do not exist: run `dvc repro baseline` (or `fgq-train`) to train them, "
            "or set model.checkpoint=PATH"
        )
    return path


def quant_config(cfg: DictConfig, **overrides) -> QuantConfig:
    """``cfg.quant`` as a validated QuantConfig, with some fields replaced."""
    fields = {k: v for k, v in OmegaConf.to_container(cfg.quant, resolve=True).items() if k != "_target_"}
    return QuantConfig(**{**fields, **overrides})


def ptq_grid(cfg: DictConfig) -> list[QuantConfig]:
    """Every ``ptq`` variant at each of its group sizes x act_bits, then ``quant``; no repeats.

    act_bits varies fastest, so configs sharing weight-side repairs come one after another.
    """
    configs = []
    for variant in OmegaConf.to_container(cfg.ptq.variants, resolve=True):
        group_sizes = variant.pop("group_size", list(cfg.ptq.group_size))
        act_bits = variant.pop("act_bits", list(cfg.ptq.act_bits))
        for group_size, bits in itertools.product(group_sizes, act_bits):
            configs.append(quant_config(cfg, **variant, group_size=group_size, act_bits=bits))
    configs.append(quant_config(cfg))
    return list(dict.fromkeys(configs))


def calibration_batches(datamodule, cfg: DictConfig):
    return datamodule.calibration_dataloader(
        num_images=cfg.calibration.num_images, augment=cfg.calibration.augment, seed=cfg.seed
    )


def write_json(path: str | Path, payload) -> Path:
    """Write JSON atomically (temp file + rename) so a failed run never leaves half a file."""
    return write_text_atomically(resolve_path(path), json.dumps(payload, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path):
    path = resolve_path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run the stage that writes it first (`dvc repro`)")
    return json.loads(path.read_text())
