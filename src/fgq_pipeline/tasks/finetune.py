"""Quantization-aware fine-tuning from the FP32 checkpoint, and evaluation of its saved weights."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from ..builders import build_datamodule, build_model
from ..models import load_weights, save_weights
from ..project import resolve_path
from ..quant import quantize_model, reestimate_batchnorm
from ..seeding import seed_everything
from ..tracking import RunLog, end_interrupted_runs
from ..train import ClassifierModule, evaluate, fit
from .ptq import PostTrainingQuantizer, evaluation_loader
from .ptq_grid import finetune_quant_config
from .records import result_record
from .scoring import score


RUN_ID_KEY = "mlflow_run_id"  # in each Lightning checkpoint: the run that wrote it


class CheckpointRunLink(Callback):
    """Writes the MLflow run into every checkpoint and, on resuming one, ends the run that wrote it as
    KILLED where it was left RUNNING: a process killed outright cannot end its own run."""

    def __init__(self, log: RunLog):
        self.run_log = log  # not `log`: during fit Lightning sets each callback's `log` to the module's `log` method

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[RUN_ID_KEY] = self.run_log.run_id

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        end_interrupted_runs(self.run_log, [checkpoint.get(RUN_ID_KEY)])


def run_finetune(cfg: DictConfig, log: RunLog, checkpoint_dir: str | Path, weights_path: Path,
                 split: str = "test") -> dict:
    """PTQ as initialisation, then Lightning fine-tuning with straight-through gradients,
    optionally distilling from the FP32 model it started from (``finetune.distill_weight``).

    Lightning checkpoints go to ``checkpoint_dir``; ``cfg.finetune.resume_from`` continues one (and
    ends the run that wrote it as KILLED where it was left RUNNING). The
    fine-tuned weights go to ``weights_path`` (the stage's tracked output, or a CLI job's run directory,
    so that a job never overwrites the pipeline's weights). Lightning's training curves go to ``log``.
    ``split``: what top-1 is measured on, per epoch and at the end: ``test`` (the stage), or
    ``holdout`` (a CLI job choosing settings: ``cfg.holdout_images`` training images left out of training).
    """
    quant = finetune_quant_config(cfg)
    seed_everything(cfg.seed)
    datamodule = build_datamodule(cfg)
    if split == "holdout":  # choosing fine-tune settings: train without the holdout images, validate on them
        datamodule.hold_out(cfg.holdout_images, cfg.seed)
    log.set_tags({"evaluated_on": split})
    fp32_model = build_model(cfg)
    fp32_top1 = evaluate(fp32_model, evaluation_loader(cfg, datamodule, split), datamodule.num_classes)["top1"]
    model = PostTrainingQuantizer(cfg, fp32_model, datamodule, log).model(quant)
    before = score(model, evaluation_loader(cfg, datamodule, split), datamodule.num_classes, quant.scale_dtype)
    settings = cfg.finetune
    module = ClassifierModule(
        model, lr=settings.lr, epochs=settings.epochs, optimizer=settings.optimizer,
        weight_decay=settings.weight_decay, teacher=fp32_model if settings.distill_weight > 0 else None,
        distill_weight=settings.distill_weight, distill_temperature=settings.distill_temperature,
    )
    # save_top_k=1 without a monitor keeps the latest epoch; last.ckpt is rewritten with it every epoch
    checkpoints = ModelCheckpoint(dirpath=checkpoint_dir, save_last=True, save_top_k=1)
    resume = cfg.finetune.get("resume_from")
    fit(module, datamodule, epochs=cfg.finetune.epochs, log=log, default_root_dir=checkpoint_dir,
        callbacks=[checkpoints, CheckpointRunLink(log)], ckpt_path=str(resolve_path(resume)) if resume else None,
        trainer_options=OmegaConf.to_container(cfg.trainer, resolve=True))
    if settings.bn_reestimate_batches:
        # Training leaves each BatchNorm's running statistics as a momentum average of its last few
        # batches; the quantized network is sensitive to that noise, so average over many instead.
        seed_everything(cfg.seed)
        reestimate_batchnorm(model, islice(datamodule.train_dataloader(), settings.bn_reestimate_batches))
    save_weights(model, weights_path, metadata={"model": cfg.model.name})
    after = score(model, evaluation_loader(cfg, datamodule, split), datamodule.num_classes, quant.scale_dtype)
    budget = cfg.baseline.budget_images or cfg.baseline.epochs * datamodule.num_train_images
    return {
        "fp32_top1": fp32_top1,
        "ptq_top1": before["top1"],
        "top1": after["top1"],
        "top5": after["top5"],
        "epochs": cfg.finetune.epochs,
        "extra_training_fraction": cfg.finetune.epochs * len(datamodule.train_dataloader().dataset) / budget,
        "evaluated_on": split,
    }


def evaluate_finetuned(cfg: DictConfig, fp32_top1: float, extra_training_fraction: float) -> dict:
    """Reload the fine-tuned weights into a fresh quantized model and evaluate them: one record."""
    quant = finetune_quant_config(cfg)
    seed_everything(cfg.seed)
    datamodule = build_datamodule(cfg)
    model = quantize_model(build_model(cfg, load_checkpoint=False), quant)
    load_weights(model, resolve_path(cfg.paths.finetuned_weights))
    metrics = score(model, datamodule.test_dataloader(), datamodule.num_classes, quant.scale_dtype)
    record = result_record(cfg, quant, model, datamodule, metrics, fp32_top1, finetuned=True)
    record["extra_training_fraction"] = extra_training_fraction
    return record
