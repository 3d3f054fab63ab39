"""Quantized models as packed integer files (what ``IntegerNet.load`` runs), measured as written.

A model is one of two sources, each quantized at its own config: ``ptq``, the ptq stage's headline
model (``cfg.quant``), and ``finetuned``, the fine-tuned one (``finetune.group_size`` /
``finetune.act_bits``). Its weights come from a saved file when one is given (``export.weights`` for
``fgq-export``), else the ptq model is calibrated afresh, as the ptq stage does, and the fine-tuned
one is read from ``paths.finetuned_weights``. A calibrated ptq model's weights are saved beside its
packed files as ``ptq.safetensors``, so a later step rebuilds the same model with ``quantize_model``
and ``load_weights`` without calibrating again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from omegaconf import DictConfig
from torch import nn
from tqdm.auto import tqdm

from ..builders import build_datamodule, build_model
from ..kernels import bits_per_weight, export_packed, load_packed
from ..models import load_weights, read_metadata, save_weights
from ..project import project_root, resolve_path
from ..quant import QuantConfig, quantize_model
from ..seeding import seed_everything
from ..tracking import RunLog
from .export_settings import check_exportable
from .ptq import PostTrainingQuantizer
from .ptq_grid import finetune_quant_config, quant_config

RECORDS_KEY = "exports"  # the stage's metrics JSON: {"exports": [one record per packed file]}
PTQ_WEIGHTS = "ptq.safetensors"
PACKED_SUFFIX = ".fgq"
QUANT_METADATA = "quant"  # the saved ptq weights' quantization config (JSON), checked when they are reloaded
MEASURES = ("file_bytes", "bits_per_weight")


def packed_path(out_dir: str | Path, source: str, scale_dtype: str) -> Path:
    """``<out_dir>/<source>-<scale_dtype>.fgq``, a name later stages can find without reading the records."""
    return Path(out_dir) / f"{source}-{scale_dtype}{PACKED_SUFFIX}"


def source_quant_config(cfg: DictConfig, source: str) -> QuantConfig:
    """The config ``source`` is quantized at: ``cfg.quant`` (ptq) or the fine-tuning one (finetuned)."""
    return quant_config(cfg) if source == "ptq" else finetune_quant_config(cfg)


def export_all(cfg: DictConfig, log: RunLog, out_dir: str | Path) -> dict:
    """The stage: every model of ``export.models`` at every scale dtype of ``export.scale_dtypes``.

    Returns the records under ``exports``, and each file's bytes and bits per weight again as flat
    ``<model>.<scale_dtype>.<measure>`` numbers: those the runner logs to MLflow and ``dvc metrics
    show`` lists (both skip lists).
    """
    sources, scale_dtypes = list(cfg.export.models), list(cfg.export.scale_dtypes)
    for source in sources:  # all refusals before the first model is built
        check_exportable(source_quant_config(cfg, source), source)
    records = [record for source in sources for record in export_source(cfg, log, source, scale_dtypes, out_dir)]
    return {RECORDS_KEY: records,
            **{f"{r['model']}.{r['scale_dtype']}.{measure}": r[measure] for r in records for measure in MEASURES}}


def export_one(cfg: DictConfig, log: RunLog, out_dir: str | Path) -> dict:
    """``fgq-export``: ``export.source`` with ``export.scale_dtype`` scales (from ``export.weights`` if
    set) into ``out_dir``; one record. The app's own settings go to ``log`` as params."""
    settings = cfg.export
    source, scale_dtype, weights = settings.source, settings.scale_dtype, settings.weights
    log.log_params({"export.source": source, "export.scale_dtype": scale_dtype, "export.weights": str(weights)})
    check_exportable(source_quant_config(cfg, source), source)
    (record,) = export_source(cfg, log, source, [scale_dtype], out_dir, weights=weights)
    return record


def export_source(cfg: DictConfig, log: RunLog, source: str, scale_dtypes: list[str], out_dir: str | Path,
                  weights: str | Path | None = None) -> list[dict]:
    """``source`` packed once per scale dtype into ``out_dir``: one record per file.

    ``weights`` is a file ``save_weights`` wrote for a model quantized as ``source`` is: for
    finetuned, fgq-finetune's ``finetuned.safetensors`` or the finetune stage's weights (trained at
    ``finetune.*``); for ptq, an export's ``ptq.safetensors``.
    """
    quant = source_quant_config(cfg, source)
    if weights is not None:
        weights = resolve_path(weights)
        model = saved_quantized_model(cfg, source, weights)
    elif source == "ptq":
        model, weights = calibrated_ptq_model(cfg, log), Path(out_dir) / PTQ_WEIGHTS
        # one metadata key: safetensors writes several in a random order, and a DVC output should be byte-stable
        save_weights(model, weights, metadata={QUANT_METADATA: json.dumps(quant.to_dict())})
    else:
        weights = resolve_path(cfg.paths.finetuned_weights)
        model = saved_quantized_model(cfg, source, weights)
    return [export_file(model, source, quant, scale_dtype, out_dir) | {"weights": _project_relative(weights)}
            for scale_dtype in tqdm(scale_dtypes, desc=f"export {source}", unit="file", mininterval=2.0)]


def calibrated_ptq_model(cfg: DictConfig, log: RunLog) -> nn.Module:
    """The ptq stage's model of ``cfg.quant``: the FP32 model and data built as its grid builds them
    (less the FP32 test pass, which changes nothing: every step below reseeds), then quantized,
    repaired and calibrated by the same PostTrainingQuantizer."""
    seed_everything(cfg.seed)
    datamodule = build_datamodule(cfg)
    return PostTrainingQuantizer(cfg, build_model(cfg), datamodule, log).model(quant_config(cfg))


def saved_quantized_model(cfg: DictConfig, source: str, weights: Path) -> nn.Module:
    """A fresh model quantized as ``source`` is, with saved weights loaded: the state dict holds the
    latent weights, BatchNorm statistics, bias corrections and calibrated activation scales, so
    nothing is recalibrated. A file that records its config (``ptq.safetensors``) must match it."""
    quant = source_quant_config(cfg, source)
    model = load_weights(quantize_model(build_model(cfg, load_checkpoint=False), quant), weights)
    _check_saved_config(weights, quant, source)
    return model.eval()


def _check_saved_config(weights: Path, quant: QuantConfig, source: str) -> None:
    """Weights are only meaningful in the config they were quantized at (group size, activation bits
    and calibration shape what the state dict holds), and shapes alone do not tell: compare the
    config a file records."""
    recorded = read_metadata(weights).get(QUANT_METADATA)
    saved, wanted = json.loads(recorded or "{}"), quant.to_dict()
    differing = [k for k in saved if saved[k] != wanted.get(k)]
    if differing:
        raise ValueError(f"{weights} was quantized at {_settings(saved, differing)}, but the {source} model here has "
                         f"{_settings(wanted, differing)}; export it with the settings it was saved with")


def _settings(config: dict, keys: list[str]) -> str:
    return ", ".join(f"{key}={config.get(key)!r}" for key in keys)


def export_file(model: nn.Module, source: str, quant: QuantConfig, scale_dtype: str, out_dir: str | Path) -> dict:
    """One packed file of ``model``, its record, and a line saying what it holds."""
    path = export_packed(model, packed_path(out_dir, source, scale_dtype), scale_dtype)
    record = {"model": source, "scale_dtype": scale_dtype, "path": _project_relative(path),
              "group_size": quant.group_size, "act_bits": quant.act_bits, **measure_packed(path)}
    tqdm.write(f"exported {source} N={quant.group_size} A{quant.act_bits} {scale_dtype} scales: "
               f"{record['file_bytes']:,} bytes, {record['bits_per_weight']:.2f} bits/weight -> {record['path']}")
    return record


def measure_packed(path: str | Path) -> dict:
    """What a packed file costs, measured from the file as written.

    ``file_bytes``: its size on disk, header (layer metadata, graph), biases and padding included.
    ``bits_per_weight``: ``kernels.bits_per_weight`` over all its layers, i.e. the stored weight
    bits (2-bit ternary codes with each row padded to whole bytes, and the int8 weights of layers
    kept at 8 bits) plus the stored scale bits (and, with int8 scales, one fp32 scale-of-scales per
    output filter), divided by the number of weights; biases and the header are left out, as FP32
    carries them too.
    """
    packed = load_packed(path)
    return {"file_bytes": os.stat(path).st_size, "bits_per_weight": bits_per_weight(list(packed.layers.values()))}


def _project_relative(path: Path) -> str:
    """``path`` relative to the project root when it lies inside it (a stage's output), else absolute."""
    path, root = Path(path).resolve(), project_root()
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
