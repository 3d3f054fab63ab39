"""Post-training FGQ: quantize the FP32 model, repair, calibrate, evaluate (one config; the grid: ptq_grid_run)."""

from __future__ import annotations

import copy
import dataclasses
import time

from omegaconf import DictConfig

from ..builders import build_datamodule, build_model
from ..calibration import calibration_batches, calibration_transform
from ..quant import (
    QuantConfig,
    calibrate_activations,
    quantize_model,
    reconstruct_blocks,
    repair_weights,
    reset_activation_quantizers,
)
from ..seeding import seed_everything
from ..tracking import RunLog
from ..train import evaluate
from .ptq_grid import quant_config, reconstruct_config
from .records import result_record
from .scoring import score

ACTIVATION_FIELDS = ("act_bits", "image_bits", "act_calibration", "act_percentile", "power_of_two_scale")


class PostTrainingQuantizer:
    """Builds PTQ models of one FP32 model, sharing the weight-side work between configs.

    Repairs run with float activations, so configs that differ only in activation settings
    share them: a grid ordered with those fields varying fastest repairs each weight config once.
    Every step is reseeded, so a result does not depend on what ran before it. Calibration images
    are transformed as the model was trained (see ``calibration``); ``log`` is told which way. Block
    reconstruction (``rounding: reconstruct``) needs quantized activations, so it runs last, per config.
    """

    def __init__(self, cfg: DictConfig, fp32_model, datamodule, log: RunLog):
        self.cfg, self.fp32_model, self.datamodule = cfg, fp32_model, datamodule
        self.reconstruct = reconstruct_config(cfg)
        self.calibration = calibration_transform(cfg, datamodule)
        self.calibration.announce(log)
        self._repaired: tuple[QuantConfig, object] | None = None
        self.reconstruct_seconds: float | None = None  # of the last model() that reconstructed

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
        if quant.rounding == "reconstruct":
            seed_everything(self.cfg.seed)
            started = time.perf_counter()
            reconstruct_blocks(model, self.fp32_model, self._calibration_batches(), self.reconstruct, self.cfg.seed)
            self.reconstruct_seconds = time.perf_counter() - started
        return model

    def evaluate(self, quant: QuantConfig, fp32_top1: float, split: str = "test") -> dict:
        model = self.model(quant)
        loader = evaluation_loader(self.cfg, self.datamodule, split)
        metrics = score(model, loader, self.datamodule.num_classes, quant.scale_dtype)
        record = result_record(self.cfg, quant, model, self.datamodule, metrics, fp32_top1)
        if quant.rounding == "reconstruct":
            record["reconstruct_seconds"] = self.reconstruct_seconds
        return record


def evaluation_loader(cfg: DictConfig, datamodule, split: str):
    """The images top-1 is measured on: the test set, or ``holdout`` (``cfg.holdout_images`` training
    images that calibration never draws) for choosing settings before the test set is looked at."""
    if split == "holdout":
        return datamodule.holdout_dataloader(cfg.holdout_images, cfg.seed)
    return datamodule.test_dataloader()


def fp32_reference(cfg: DictConfig, split: str = "test"):
    """The data, the FP32 model and its top-1 on ``split``: what every PTQ record is measured against."""
    seed_everything(cfg.seed)
    datamodule = build_datamodule(cfg)
    model = build_model(cfg)
    fp32 = evaluate(model, evaluation_loader(cfg, datamodule, split), datamodule.num_classes)
    return datamodule, model, fp32["top1"]


def run_ptq(cfg: DictConfig, log: RunLog) -> dict:
    """The ``cfg.quant`` configuration, measured on ``cfg.evaluate_on``: one record (the caller logs it)."""
    datamodule, model, fp32_top1 = fp32_reference(cfg, cfg.evaluate_on)
    log.set_tags({"evaluated_on": cfg.evaluate_on})
    record = PostTrainingQuantizer(cfg, model, datamodule, log).evaluate(quant_config(cfg), fp32_top1, cfg.evaluate_on)
    return {**record, "evaluated_on": cfg.evaluate_on}
