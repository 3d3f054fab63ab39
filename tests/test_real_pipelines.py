"""The PTQ task on real CIFAR-10 with the pretrained ResNet-20, and the ImageNet path end to end."""

from pathlib import Path

import numpy as np
import torch
from conftest import needs_shared
from PIL import Image

from fgq_pipeline import tracking
from fgq_pipeline.models import save_weights, torchvision_model
from fgq_pipeline.params import compose_config
from fgq_pipeline.tasks.ptq import run_ptq


def ptq_in_run(tmp_path, monkeypatch, overrides: list[str]) -> dict:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'store.db'}")
    cfg = compose_config(overrides)
    with tracking.tracked_run(cfg.mlflow.experiment, "fgq-ptq", {}) as log:
        return run_ptq(cfg, log)


@needs_shared
def test_cifar10_resnet20_smoke_ptq_on_a_test_subset(tmp_path, monkeypatch):
    """CI smoke: the default PTQ (N=4, A8, GPTQ rounding) of the real checkpoint on 300 test images."""
    record = ptq_in_run(tmp_path, monkeypatch, [
        "experiment=cifar10_resnet", "data.subset_test=300", "data.subset_train=2000", "calibration.num_images=256",
    ])
    assert record["model"] == "cifar_resnet20" and record["dataset"] == "cifar10"
    assert record["num_images"] == 300
    assert record["fp32_top1"] > 0.88
    assert record["top1"] > record["fp32_top1"] - 0.06  # a collapse (plain PTQ: ~56%) fails this
    assert record["mult_eliminated"] > 0.70


def write_tiny_imagefolder(root: Path, classes: int = 3, per_class: int = 4) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, size=(40, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


def test_imagenet_experiment_runs_ptq_on_a_tiny_imagefolder_with_local_weights(tmp_path, monkeypatch):
    """The paper's ImageNet run, changing only data.root and the weights: here a tiny fake ImageFolder."""
    write_tiny_imagefolder(tmp_path / "imagenet")
    torch.manual_seed(0)
    weights = tmp_path / "resnet18.safetensors"
    save_weights(torchvision_model("resnet18", num_classes=3), weights)
    record = ptq_in_run(tmp_path, monkeypatch, [
        "experiment=imagenet", f"data.root={tmp_path / 'imagenet'}", "data.image_size=32", "data.resize=36",
        "data.num_workers=0", "model.arch=resnet18", "model.num_classes=3", "model.weights=null",
        f"model.checkpoint={weights}", "calibration.num_images=8",
        "quant.rounding=nearest",  # GPTQ on ResNet-18's 4608-column layers takes minutes on a CPU
    ])
    assert record["model"] == "resnet18" and record["dataset"] == "imagenet"
    assert record["num_images"] == 12
    assert 0.0 <= record["top1"] <= 1.0
    assert record["mult_eliminated"] > 0.70  # N=4 on every layer but the 8-bit first conv and fc
