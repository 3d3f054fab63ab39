"""Integer verification: each packed file of the export stage, over the whole test set, through the
Numba integer path and through the torch twin of the model it was exported from.

The twin computes the arithmetic every reported accuracy uses (:mod:`fgq_pipeline.kernels.torch_twin`);
the integer path is what a user ships. They must give the same logits on every image, so
``logit_mismatches`` must be 0. The float fake-quant model's top-1 stands beside them: it is what the
scored arithmetic replaced, and how far apart the two are is worth seeing.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from ..builders import build_datamodule
from ..devices import model_device
from ..kernels import IntegerNet
from ..kernels.torch_twin import torch_twin
from ..modes import eval_mode
from ..project import read_json, resolve_path
from ..seeding import seed_everything
from .export import RECORDS_KEY, saved_quantized_model, source_quant_config

MEASURES = ("integer_top1", "scored_top1", "float_top1", "logit_mismatches", "top1_agreement",
            "max_logit_difference", "integer_images_per_s")


def verify_exports(cfg: DictConfig) -> list[dict]:
    """Every file the export stage wrote: one record each."""
    seed_everything(cfg.seed)
    datamodule = build_datamodule(cfg)
    return [verify_file(cfg, export, datamodule) for export in read_json(cfg.paths.export_metrics)[RECORDS_KEY]]


def verify_metrics(records: list[dict]) -> dict:
    """The records as flat metrics, ``<model>.<scale_dtype>.<measure>``, for dvc metrics and MLflow."""
    return {f"{r['model']}.{r['scale_dtype']}.{measure}": r[measure] for r in records for measure in MEASURES}


def verify_file(cfg: DictConfig, export: dict, datamodule) -> dict:
    source = export["model"]
    model = saved_quantized_model(cfg, source, resolve_path(export["weights"]))
    net = IntegerNet.load(resolve_path(export["path"]))
    counts = {"images": 0, "integer": 0, "scored": 0, "float": 0, "agree": 0, "mismatches": 0}
    max_difference, integer_seconds = 0.0, 0.0
    loader = datamodule.test_dataloader()
    net(next(iter(loader))[0].numpy())  # load the compiled kernels before the clock starts
    device = model_device(model)
    with eval_mode(model), torch.inference_mode():
        twin = torch_twin(model, export["scale_dtype"])
        for images, labels in tqdm(loader, desc=f"verify {source} {export['scale_dtype']}",
                                   leave=False, mininterval=2.0):
            start = time.perf_counter()
            integer = net(images.numpy())
            integer_seconds += time.perf_counter() - start
            on_device = images.to(device)
            scored, fake_quant = twin(on_device).cpu().numpy(), model(on_device).cpu().numpy()
            truth = labels.numpy()
            counts["images"] += len(truth)
            counts["integer"] += int((integer.argmax(1) == truth).sum())
            counts["scored"] += int((scored.argmax(1) == truth).sum())
            counts["float"] += int((fake_quant.argmax(1) == truth).sum())
            counts["agree"] += int((integer.argmax(1) == scored.argmax(1)).sum())
            counts["mismatches"] += int((integer != scored).any(axis=1).sum())
            max_difference = max(max_difference, float(np.abs(integer - scored).max()))
    images = counts["images"]
    quant = source_quant_config(cfg, source).to_dict()
    return {
        "model": source,
        **quant,
        "quant_scale_dtype": quant["scale_dtype"],  # the scales the model was scored with
        "scale_dtype": export["scale_dtype"],  # the scales this file stores
        "finetuned": source == "finetuned",
        "num_images": images,
        "integer_top1": counts["integer"] / images,
        "scored_top1": counts["scored"] / images,
        "float_top1": counts["float"] / images,
        "logit_mismatches": counts["mismatches"],
        "top1_agreement": counts["agree"] / images,
        "max_logit_difference": max_difference,
        "file_bytes": export["file_bytes"],
        "bits_per_weight": export["bits_per_weight"],
        "integer_images_per_s": images / integer_seconds,
    }
