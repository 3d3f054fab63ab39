"""Top-1/top-5 accuracy of a classifier over a loader, the number every experiment reports.

A quantized model is scored in the arithmetic its exported file runs (:func:`fgq_pipeline.kernels.
torch_twin.exact_model`: the Numba integer path on the CPU, its torch twin on an accelerator; the verify
stage shows they agree bit for bit), so the integer path reproduces every reported accuracy. Only a model the integer path cannot run (float activations, per-filter or per-layer scales)
is scored in the fake-quant model's float arithmetic; the record says which.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassAccuracy
from tqdm.auto import tqdm

from ..kernels.torch_twin import exact_model
from ..modes import eval_mode

PROGRESS_BAR_MIN_BATCHES = 20


def evaluate(model: nn.Module, loader: DataLoader, num_classes: int) -> dict[str, float | int]:
    """Accuracy in eval mode (batch-norm running stats), leaving the model's mode as it was."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
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


def score(model: nn.Module, loader: DataLoader, num_classes: int) -> dict[str, float | int | str]:
    """Accuracy of a quantized model as the pipeline reports it; ``arithmetic``: "integer" or "float"."""
    with eval_mode(model):
        try:
            scorer, arithmetic = exact_model(model), "integer"
        except ValueError:  # the integer path cannot run this configuration: float fake-quant it is
            scorer, arithmetic = model, "float"
    return evaluate(scorer, loader, num_classes) | {"arithmetic": arithmetic}


def _batches(loader: DataLoader):
    """Only long evaluations get a progress bar; short ones would just add log noise."""
    try:
        show_bar = len(loader) > PROGRESS_BAR_MIN_BATCHES
    except TypeError:  # iterable-style datasets have no length
        show_bar = False
    return tqdm(loader, desc="evaluate", leave=False) if show_bar else loader
