"""Post-training FGQ: quantize the FP32 model, repair, calibrate, evaluate; one config or a grid."""

from __future__ import annotations

import copy
import dataclasses

from omegaconf import DictConfig
from tqdm.auto import tqdm

from ..builders import build_datamodule, build_model
from ..calibration import calibration_batches, calibration_transform
from ..quant import (
    QuantConfig,
    calibrate_activations,
    quantize_model,
    repair_weights,
    reset_activation_quantizers,
)
from ..seeding import seed_everything
from ..tracking import RunLog
from ..train import evaluate
from .ptq_grid import ptq_grid, quant_config
from .records import result_record, run_name
from .scoring import score

ACTIVATION_FIELDS = ("act_bits", "act_calibration", "act_percentile", "power_of_two_scale")


class PostTrainingQuantizer:
    """Builds PTQ models of one FP32 model, sharing the weight-side work between configs.

    Repairs run with float activations, so configs that differ only in activation settings
    share them: a grid ordered with those fields varying fastest repairs each weight config once.
    Every step is reseeded, so a result does not depend on what ran before it. Calibration images
    are transformed as the model was trained (see ``calibration``); ``log`` is told which way.
    """

    def __init__(self, cfg: DictConfig, fp32_model, datamodule, log: RunLog):
        self.cfg, self.fp32_model, self.datamodule = cfg, fp32_model, datamodule
        self.calibration = calibration_transform(cfg, datamodule)
        self.calibration.announce(log)
        self._repaired: tuple[QuantConfig, object] | None = None

    def _calibration_batches(self):
        return calibration_batches(self.datamodule, self.cfg, self.calibration.augment)

    def model(self, quant: QuantConfig):
        weight_side = dataclasses.replace(quant, **{f: getattr(QuantConfig, f) for f in ACTIVATION_FIELDS})
        if self._repaired is None or self._repaired[0] != weight_side:
            seed_everything(self.cfg.seed)
            model = quantize_model(copy.deepcopy(self.fp32_model), weight_side)
            repair_weights(model, weight_side, self._calibration_batches())
            self._repaired = (weight_side, model)
        model = reset_activation_quantizers(copy.deepcopy(self._repaired[1]), quant)
        seed_everything(self.cfg.seed)
        calibrate_activations(model, self._calibration_batches())
        return model

    def evaluate(self, quant: QuantConfig, fp32_top1: float) -> dict:
        model = self.model(quant)
        metrics = score(model, self.datamodule.test_dataloader(), self.datamodule.num_classes)
        return result_record(self.cfg, quant, model, self.datamodule, metrics, fp32_top1)


def _fp32(cfg: DictConfig):
    seed_everything(cfg.seed)
    datamodule = build_datamodule(cfg)
    model = build_model(cfg)
    fp32 = evaluate(model, datamodule.test_dataloader(), datamodule.num_classes)
    return datamodule, model, fp32["top1"]


def run_ptq(cfg: DictConfig, log: RunLog) -> dict:
    """The ``cfg.quant`` configuration: one record (the caller logs it)."""
    datamodule, model, fp32_top1 = _fp32(cfg)
    return PostTrainingQuantizer(cfg, model, datamodule, log).evaluate(quant_config(cfg), fp32_top1)


def run_ptq_grid(cfg: DictConfig, log: RunLog) -> list[dict]:
    """Every config of ``cfg.ptq`` (and ``cfg.quant``), each logged as a child run of ``log``."""
    datamodule, model, fp32_top1 = _fp32(cfg)
    quantizer = PostTrainingQuantizer(cfg, model, datamodule, log)
    records = []
    for quant in tqdm(ptq_grid(cfg), desc="PTQ grid", unit="config", mininterval=2.0):
        with log.child_run("ptq", quant.to_dict(), run_name(quant)) as child:
            record = quantizer.evaluate(quant, fp32_top1)
            child.log_metrics(record)
        records.append(record)
    return records


def headline_record(cfg: DictConfig, records: list[dict]) -> dict:
    """The grid's record of ``cfg.quant``, the configuration the stage's metrics report."""
    headline = quant_config(cfg).to_dict()
    return next(r for r in records if all(r[k] == v for k, v in headline.items()))
