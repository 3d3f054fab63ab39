"""Train the FP32 baseline (or evaluate a given checkpoint) and save its weights."""

from __future__ import annotations

import mlflow
from omegaconf import DictConfig
from pytorch_lightning.loggers import MLFlowLogger

from ..experiment import build_datamodule, build_model, resolve_path, seed_everything
from ..models import save_weights
from ..tracking import tracking_uri
from ..train import ClassifierModule, evaluate, fit


def train_baseline(cfg: DictConfig) -> dict:
    """Train ``cfg.model`` from scratch on ``cfg.data`` and write it to ``cfg.model.checkpoint``.

    Runs inside an active MLflow run, which the Lightning logger writes into.
    """
    seed_everything(cfg.seed)
    datamodule = build_datamodule(cfg)
    model = build_model(cfg, load_checkpoint=False)
    module = ClassifierModule(model, lr=cfg.baseline.lr, epochs=cfg.baseline.epochs, optimizer=cfg.baseline.optimizer)
    logger = MLFlowLogger(tracking_uri=tracking_uri(), run_id=mlflow.active_run().info.run_id)
    fit(module, datamodule, epochs=cfg.baseline.epochs, logger=logger)
    save_weights(model, resolve_path(cfg.model.checkpoint), metadata={"model": cfg.model.name})
    metrics = evaluate(model, datamodule.test_dataloader(), datamodule.num_classes)
    return {"fp32_top1": metrics["top1"], "fp32_top5": metrics["top5"], "num_images": metrics["num_images"],
            "epochs": cfg.baseline.epochs, "train_images": datamodule.num_train_images}
