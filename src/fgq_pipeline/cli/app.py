"""What every Hydra app shares: the conf/ directory, one MLflow run per job (FAILED if the job
fails), the config validated before any work, metrics.json, and user errors as one line, exit 2."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from .. import tracking
from ..experiment import write_json
from ..params import config_dir
from ..validation import exit_on_user_error, validate_config

MetricsFn = Callable[[DictConfig, Path], dict]


def run_job(cfg: DictConfig, stage: str, task: MetricsFn) -> dict:
    """Run ``task`` as one MLflow run (a child of the sweep's run under -m) and write metrics.json."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    parent = None
    if hydra_cfg.mode == RunMode.MULTIRUN:
        parent = tracking.sweep_parent_run_id(Path(hydra_cfg.sweep.dir))
    overrides = " ".join(hydra_cfg.overrides.task) or "defaults"
    with tracking.tracked_run(cfg.mlflow.experiment, stage, cfg, run_name=f"{stage} {overrides}", parent_run_id=parent):
        validate_config(cfg)
        metrics = task(cfg, run_dir)
        tracking.log_metrics(metrics)
        tracking.mlflow.log_artifact(str(write_json(run_dir / "metrics.json", metrics)))
    return metrics


def hydra_app(stage: str, task: MetricsFn) -> Callable[[], None]:
    """A console-script entry point running ``task`` under Hydra with the project's conf/."""

    @hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
    @exit_on_user_error(stage)
    def main(cfg: DictConfig) -> float | None:
        return run_job(cfg, stage, task).get("top1")  # the value a Hydra sweeper optimises

    return main
