"""MLflow tracking: one project-wide store, one run per stage or CLI job, sweeps under a parent run.

The store defaults to a SQLite file at the project root so every stage, CLI run and sweep of a
checkout lands in one place; ``MLFLOW_TRACKING_URI`` points it elsewhere (e.g. a team server).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from .experiment import project_root

STORE_FILE = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
PARENT_RUN_FILE = "mlflow_parent_run_id"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / STORE_FILE}"


def use_experiment(name: str) -> str:
    """Point MLflow at the project store and experiment ``name`` (created on first use)."""
    mlflow.set_tracking_uri(tracking_uri())
    client = MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        artifacts = (project_root() / ARTIFACT_DIR / name).as_uri()
        return client.create_experiment(name, artifact_location=artifacts)
    return experiment.experiment_id


def flatten(params: Mapping, prefix: str = "") -> dict[str, str]:
    """Nested config -> {"a.b": "value"}, the form MLflow params and run comparison expect."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return flat


def params_hash(params: Mapping) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:12]


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=project_root(), capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@contextmanager
def tracked_run(
    experiment: str,
    stage: str,
    params: Mapping | DictConfig,
    run_name: str | None = None,
    parent_run_id: str | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run tagged with stage, git commit and params hash; FAILED if the body raises."""
    if isinstance(params, DictConfig):
        params = OmegaConf.to_container(params, resolve=True)
    experiment_id = use_experiment(experiment)
    tags = {"stage": stage, "git_commit": git_commit(), "params_hash": params_hash(params)}
    nested = mlflow.active_run() is not None  # in-process parent: the active run
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=run_name or stage, tags=tags, nested=nested,
        parent_run_id=None if nested else parent_run_id,
    ) as run:
        mlflow.log_params(flatten(params))
        yield run


def log_metrics(metrics: Mapping[str, object]) -> None:
    """Log the numeric entries of ``metrics`` (strings and flags are params, not metrics)."""
    numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    mlflow.log_metrics(numeric)


def start_parent_run(experiment: str, run_name: str, sweep_dir: Path) -> str:
    """Open the parent run of a sweep and leave its id in the sweep directory for the jobs."""
    experiment_id = use_experiment(experiment)
    run = MlflowClient().create_run(experiment_id, run_name=run_name, tags={"stage": "sweep", "git_commit": git_commit()})
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / PARENT_RUN_FILE).write_text(run.info.run_id)
    return run.info.run_id


def sweep_parent_run_id(sweep_dir: Path) -> str | None:
    path = sweep_dir / PARENT_RUN_FILE
    return path.read_text().strip() if path.exists() else None


def end_parent_run(sweep_dir: Path, status: str = "FINISHED") -> None:
    run_id = sweep_parent_run_id(sweep_dir)
    if run_id:
        mlflow.set_tracking_uri(tracking_uri())
        MlflowClient().set_terminated(run_id, status)
