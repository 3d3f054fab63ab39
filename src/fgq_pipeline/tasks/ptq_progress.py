"""The finished configurations of a PTQ grid on disk, so a killed grid resumes where it stopped.

With reconstruction a grid runs for hours. Each configuration's record is written, atomically, as
soon as it is measured, under a directory named by a digest of everything a record depends on
besides the configuration itself: data, FP32 weights, seed, calibration, device, the package's code
and the numeric libraries. A rerun reads back only entries made from the same inputs; a change of
any input names another directory, so a stale entry is never used. A reconstruct configuration's
entry is named with the reconstruct settings too, so changing them remeasures those rows only.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from importlib.metadata import version
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ..devices import model_device
from ..project import resolve_path, write_json
from ..quant import QuantConfig
from ..quant.config import ReconstructConfig

PACKAGE_DIR = Path(__file__).resolve().parents[1]
NUMERIC_LIBRARIES = ("torch", "numpy", "numba")  # their versions can move the last bits of a result


def digest(payload) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(resolve_path(path).read_bytes()).hexdigest()


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 over the loaded weights and buffers: covers a checkpoint file and weights a library provides."""
    hashed = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        hashed.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        hashed.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return hashed.hexdigest()


def code_digest() -> str:
    """sha256 over the package's source: any edit to the method, the scorer or the data code counts."""
    hashed = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        hashed.update(str(path.relative_to(PACKAGE_DIR)).encode())
        hashed.update(path.read_bytes())
    return hashed.hexdigest()


def device_name(model: torch.nn.Module) -> str:
    device = model_device(model)
    return f"cuda {torch.cuda.get_device_name(device)}" if device.type == "cuda" else device.type


def grid_inputs(cfg: DictConfig, fp32_model: torch.nn.Module) -> dict:
    """What a grid record depends on besides its QuantConfig (the data through its manifest, written
    by the prepare stage)."""
    return {
        "data": OmegaConf.to_container(cfg.data, resolve=True),
        "data_manifest": file_digest(cfg.paths.data_manifest),
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "fp32_weights": weights_digest(fp32_model),
        "seed": cfg.seed,
        "calibration": OmegaConf.to_container(cfg.calibration, resolve=True),
        "device": device_name(fp32_model),
        "code": code_digest(),
        "libraries": {name: version(name) for name in NUMERIC_LIBRARIES},
    }


GRID_RUN_SUFFIX = ".grid-run"  # ``<run id>.grid-run``: a grid run that has worked on these inputs


class FinishedConfigs:
    """``<store>/<digest of the inputs>/<digest of the config>.json``: a record and the MLflow run
    that measured it; beside them, an empty ``<run id>.grid-run`` for each grid run that started on
    these inputs."""

    def __init__(self, store: Path, inputs: dict, reconstruct: ReconstructConfig):
        self.directory, self.reconstruct = store / digest(inputs), reconstruct

    def _entry(self, quant: QuantConfig) -> Path:
        learned = {"reconstruct": self.reconstruct.to_dict()} if quant.rounding == "reconstruct" else {}
        return self.directory / f"{digest({**quant.to_dict(), **learned})}.json"

    def load(self, quant: QuantConfig) -> dict | None:
        """The entry of ``quant`` (``record`` and ``run_id``), or None if it has not finished."""
        path = self._entry(quant)
        return json.loads(path.read_text()) if path.exists() else None

    def save(self, quant: QuantConfig, record: dict, run_id: str) -> None:
        write_json(self._entry(quant), {"quant": quant.to_dict(), "record": record, "run_id": run_id})

    def grid_runs(self) -> set[str]:
        """The MLflow runs of the grids that started on these inputs, finished configurations or not."""
        return {path.name.removesuffix(GRID_RUN_SUFFIX) for path in self.directory.glob(f"*{GRID_RUN_SUFFIX}")}

    def add_grid_run(self, run_id: str) -> None:
        """Note a grid run before it measures anything, so a rerun can end it even if it is killed
        outright before its first configuration finishes."""
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / f"{run_id}{GRID_RUN_SUFFIX}").touch()

    def discard(self) -> None:
        """Forget these inputs' entries once the grid's results are written, so a rerun measures afresh;
        the store goes too when no other inputs' entries are left in it."""
        if self.directory.exists():
            shutil.rmtree(self.directory)
        store = self.directory.parent
        if store.exists() and not any(store.iterdir()):
            store.rmdir()
