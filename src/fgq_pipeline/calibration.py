"""The images calibration sees: training images, transformed the way the model was trained.

BN re-estimation, bias correction and activation calibration learn statistics from them, so a
transform the model never saw moves those statistics away from what evaluation sees (a model
trained without augmentation loses about 8 points at N=4 when BN is re-estimated on random resized
crops). ``calibration.augment: auto`` follows the training transform recorded with the FP32
weights, else ``data.augment``; ``true`` or ``false`` overrides both.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .builders import fp32_weights_file
from .tracking import RunLog
from .training_record import recorded_training

AUTO = "auto"
AUTO_SAYS = f"calibration.augment={AUTO}"


@dataclass(frozen=True)
class CalibrationTransform:
    """Whether calibration images are augmented, what that does to them, and why it was chosen."""

    augment: bool
    transform: str  # e.g. "random resized crop to 224 + random flip"
    source: str  # what decided: "weights" (their training record), "data.augment" or "calibration.augment"
    reason: str  # the same, for people

    def tags(self) -> dict[str, str]:
        return {"calibration.augment": _text(self.augment), "calibration.transform": self.transform,
                "calibration.transform_source": self.source}

    def announce(self, log: RunLog) -> None:
        """Say in the run's output and in its MLflow tags which transform calibration uses."""
        tqdm.write(f"calibration transform: {self.transform} ({self.reason})")
        log.set_tags(self.tags())


def check_augment_setting(value: object) -> None:
    if value != AUTO and not isinstance(value, bool):
        raise ValueError(f"calibration.augment must be auto (the model's training transform), true or false, "
                         f"got {value!r}")


def calibration_transform(cfg: DictConfig, datamodule) -> CalibrationTransform:
    """The transform calibration uses: ``calibration.augment`` if true or false; for auto, the
    model's training transform (see ``_training_augment``)."""
    setting = cfg.calibration.augment
    check_augment_setting(setting)
    if setting == AUTO:
        augment, source, reason = _training_augment(cfg, datamodule)
    else:
        augment, source, reason = setting, "calibration.augment", f"set by calibration.augment={_text(setting)}"
    return CalibrationTransform(augment, datamodule.describe_transform(augment), source, reason)


def _training_augment(cfg: DictConfig, datamodule) -> tuple[bool, str, str]:
    """Whether the model trained on augmented images, what says so, and the reason in words: the
    record saved with the FP32 weights, else ``data.augment`` (how ``datamodule`` trains), for
    weights from elsewhere that record nothing."""
    weights = fp32_weights_file(cfg)
    recorded = recorded_training(weights).get("augment") if weights else None
    if recorded is not None:
        return recorded, "weights", f"{AUTO_SAYS}: trained with augment={_text(recorded)}, as recorded with {weights}"
    unrecorded = f"{weights} records" if weights else "torchvision's pretrained weights record"
    following = f"following data.augment={_text(datamodule.augment)}, as {unrecorded} no training transform"
    return datamodule.augment, "data.augment", f"{AUTO_SAYS}: {following}"


def calibration_batches(datamodule, cfg: DictConfig, augment: bool) -> DataLoader:
    """``calibration.num_images`` seeded training images, augmented or not."""
    return datamodule.calibration_dataloader(num_images=cfg.calibration.num_images, augment=augment, seed=cfg.seed)


def _text(flag: bool) -> str:
    return str(flag).lower()
