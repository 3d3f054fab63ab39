"""Post-training FGQ: quantize the FP32 model, repair, calibrate, evaluate; one config or a grid."""

from __future__ import annotations

import copy

from omegaconf import DictConfig
from tqdm.auto import tqdm

from .. import tracking
from ..experiment import build_datamodule, build_model, calibration_batches, ptq_grid, quant_config, seed_everything
from ..quant import QuantConfig, post_training_quantize, quantize_model
from ..train import evaluate
from .records import result_record, run_name


def post_training_model(cfg: DictConfig, quant: QuantConfig, fp32_model, datamodule):
    """A quantized, repaired and calibrated copy of ``fp32_model``.

    Reseeded first, so the result does not depend on what ran before it (its place in a grid).
    """
    seed_everything(cfg.seed)
    model = quantize_model(copy.deepcopy(fp32_model), quant)
    return post_training_quantize(model, quant, calibration_batches(datamodule, cfg))


def quantize_and_evaluate(cfg: DictConfig, quant: QuantConfig, fp32_model, datamodule, fp32_top1: float) -> dict:
    model = post_training_model(cfg, quant, fp32_model, datamodule)
    metrics = evaluate(model, datamodule.test_dataloader(), datamodule.num_classes)
    return result_record(cfg, quant, model, datamodule, metrics, fp32_top1)


def _fp32(cfg: DictConfig):
    seed_everything(cfg.seed)
    datamodule = build_datamodule(cfg)
    model = build_model(cfg)
    fp32 = evaluate(model, datamodule.test_dataloader(), datamodule.num_classes)
    return datamodule, model, fp32["top1"]


def run_ptq(cfg: DictConfig) -> dict:
    """The ``cfg.quant`` configuration: one record, logged to the active MLflow run."""
    datamodule, model, fp32_top1 = _fp32(cfg)
    record = quantize_and_evaluate(cfg, quant_config(cfg), model, datamodule, fp32_top1)
    tracking.log_metrics(record)
    return record


def run_ptq_grid(cfg: DictConfig) -> list[dict]:
    """Every config of ``cfg.ptq`` (and ``cfg.quant``), each a child run of the active MLflow run."""
    datamodule, model, fp32_top1 = _fp32(cfg)
    records = []
    for quant in tqdm(ptq_grid(cfg), desc="PTQ grid", unit="config", mininterval=2.0):
        with tracking.tracked_run(cfg.mlflow.experiment, "ptq", quant.to_dict(), run_name(quant)):
            record = quantize_and_evaluate(cfg, quant, model, datamodule, fp32_top1)
            tracking.log_metrics(record)
        records.append(record)
    return records
