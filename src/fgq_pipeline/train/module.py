"""Lightning wrapper that trains any nn.Module classifier, so full-precision training and
fine-tuning of a quantized model share one loop.
"""

from __future__ import annotations

import random

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

OPTIMIZERS = ("sgd", "adam")
RNG_STATE_KEY = "fgq_rng_state"
Batch = tuple[torch.Tensor, torch.Tensor]


class ClassifierModule(pl.LightningModule):
    """Cross-entropy training with SGD or Adam and a per-epoch cosine learning-rate schedule.

    With a ``teacher`` (the FP32 model a quantized one started from), the loss blends cross-entropy
    with knowledge distillation: ``distill_weight`` of it is the KL divergence to the teacher's
    softened outputs, which carries more signal per image than the labels on a small training set.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        epochs: int = 10,
        optimizer: str = "sgd",
        num_classes: int | None = None,
        teacher: nn.Module | None = None,
        distill_weight: float = 0.0,
        distill_temperature: float = 1.0,
    ):
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr!r}")
        if epochs < 1:
            raise ValueError(f"epochs (the cosine schedule length) must be >= 1, got {epochs!r}")
        if not 0 <= distill_weight <= 1:
            raise ValueError(f"distill_weight must be in [0, 1], got {distill_weight!r}")
        if distill_weight > 0 and teacher is None:
            raise ValueError(f"distill_weight={distill_weight!r} needs a teacher model to distill from")
        if distill_temperature <= 0:
            raise ValueError(f"distill_temperature must be positive, got {distill_temperature!r}")
        self.save_hyperparameters(ignore=["model", "teacher"])
        self.model = model
        self.teacher = teacher.requires_grad_(False) if teacher is not None else None
        classes = num_classes if num_classes is not None else infer_num_classes(model)
        self.train_acc = MulticlassAccuracy(num_classes=classes, average="micro")
        self.val_top1 = MulticlassAccuracy(num_classes=classes, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        logits = self.model(images)
        loss = self._loss(logits, images, labels)
        self.train_acc(logits, labels)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def _loss(self, logits: torch.Tensor, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(logits, labels)
        weight, temperature = self.hparams.distill_weight, self.hparams.distill_temperature
        if weight == 0:
            return loss
        self.teacher.eval()  # its batch-norm statistics stay those it was trained with
        with torch.no_grad():
            soft_targets = F.log_softmax(self.teacher(images) / temperature, dim=1)
        distill = F.kl_div(
            F.log_softmax(logits / temperature, dim=1), soft_targets, log_target=True, reduction="batchmean"
        ) * temperature**2
        self.log("train_distill_loss", distill, on_step=False, on_epoch=True)
        return (1 - weight) * loss + weight * distill

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        images, labels = batch
        self.val_top1(self.model(images), labels)
        self.log("val_top1", self.val_top1, on_step=False, on_epoch=True, prog_bar=True)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep the random state (augmentation, shuffling) so a resumed run continues exactly as an
        uninterrupted one would; Lightning's checkpoints do not hold it."""
        checkpoint[RNG_STATE_KEY] = rng_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if RNG_STATE_KEY in checkpoint:
            set_rng_state(checkpoint[RNG_STATE_KEY])

    def configure_optimizers(self) -> dict:
        hparams = self.hparams
        if hparams.optimizer == "sgd":
            optimizer = torch.optim.SGD(
                self.model.parameters(),
                lr=hparams.lr,
                momentum=hparams.momentum,
                weight_decay=hparams.weight_decay,
            )
        else:
            optimizer = torch.optim.Adam(
                self.model.parameters(), lr=hparams.lr, weight_decay=hparams.weight_decay
            )
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=hparams.epochs)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }


def rng_state() -> dict:
    """Python, NumPy and torch CPU generator states as tensors and plain values, so checkpoints
    still load with ``weights_only=True``."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached)}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuples(state["python"]))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))


def _as_tuples(value):
    """random.setstate wants the tuples back that a checkpoint round trip may turn into lists."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def infer_num_classes(model: nn.Module) -> int:
    """Read the class count off the last layer with ``out_features`` (the classifier head)."""
    heads = [module for module in model.modules() if hasattr(module, "out_features")]
    if not heads:
        raise ValueError(
            f"cannot infer the number of classes of {type(model).__name__}: it has no layer with "
            "out_features; pass num_classes= to ClassifierModule"
        )
    return int(heads[-1].out_features)
