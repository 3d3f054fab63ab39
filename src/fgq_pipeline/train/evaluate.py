"""Top-1/top-5 accuracy of a classifier over a loader, the number every experiment reports."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassAccuracy
from tqdm.auto import tqdm

from ..devices import model_device
from ..modes import eval_mode

PROGRESS_BAR_MIN_BATCHES = 20


def evaluate(model: nn.Module, loader: DataLoader, num_classes: int) -> dict[str, float | int]:
    """Accuracy in eval mode (batch-norm running stats), leaving the model's mode as it was."""
    device = model_device(model)
    top1 = MulticlassAccuracy(num_classes=num_classes, top_k=1, average="micro").to(device)
    top5 = MulticlassAccuracy(
        num_classes=num_classes, top_k=min(5, num_classes), average="micro"
    ).to(device)
    num_images = 0
    with eval_mode(model), torch.inference_mode():
        for images, labels in _batches(loader):
            images, labels = images.to(device), labels.to(device)
            logits = model(images)
            top1.update(logits, labels)
            top5.update(logits, labels)
            num_images += len(labels)
    if num_images == 0:
        raise ValueError("evaluate got a loader that yielded no images; check the dataset split")
    return {
        "top1": float(top1.compute()),
        "top5": float(top5.compute()),
        "num_images": num_images,
    }


def _batches(loader: DataLoader):
    """Only long evaluations get a progress bar; short ones would just add log noise."""
    try:
        show_bar = len(loader) > PROGRESS_BAR_MIN_BATCHES
    except TypeError:  # iterable-style datasets have no length
        show_bar = False
    return tqdm(loader, desc="evaluate", leave=False) if show_bar else loader
