"""The FP32 baseline: train it (or take a pretrained checkpoint), score it, save its weights."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from ..builders import build_datamodule, build_model, fp32_weights_file
from ..models import save_weights
from ..project import resolve_path
from ..seeding import seed_everything
from ..tracking import RunLog
from ..train import ClassifierModule, evaluate, fit
from ..training_record import copied_metadata, trained_metadata


def train_baseline(cfg: DictConfig, log: RunLog) -> dict:
    """Train ``cfg.model`` on ``cfg.data`` (``baseline.train``) or load ``model.checkpoint``.

    Either way the FP32 weights end up in ``paths.fp32_weights``, the input of every later stage,
    with a record of how they were trained (``data.augment``'s transform) for calibration to follow.
    Lightning's training curves go to ``log``.
    """
    seed_everything(cfg.seed)
    datamodule = build_datamodule(cfg)
    if cfg.baseline.train:
        model = build_model(cfg, load_checkpoint=False)
        module = ClassifierModule(model, lr=cfg.baseline.lr, epochs=cfg.baseline.epochs, optimizer=cfg.baseline.optimizer)
        fit(module, datamodule, epochs=cfg.baseline.epochs, log=log,
            trainer_options=OmegaConf.to_container(cfg.trainer, resolve=True))
        metadata = trained_metadata(cfg.model.name, datamodule)
    else:
        model = build_model(cfg)
        metadata = copied_metadata(cfg.model.name, fp32_weights_file(cfg))
    save_weights(model, resolve_path(cfg.paths.fp32_weights), metadata=metadata)
    metrics = evaluate(model, datamodule.test_dataloader(), datamodule.num_classes)
    return {"fp32_top1": metrics["top1"], "fp32_top5": metrics["top5"], "num_images": metrics["num_images"],
            "trained_epochs": cfg.baseline.epochs if cfg.baseline.train else 0,
            "train_images": datamodule.num_train_images}

