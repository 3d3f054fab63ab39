"""What every Hydra app shares: the conf/ directory and the project's job runner, with the job's
output directory for metrics.json and a sweep's parent MLflow run for the jobs of a multirun."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from .. import tracking
from ..params import config_dir
from ..runner import Task, run_job
from ..validation import exit_on_user_error

METRICS_FILE = "metrics.json"


def job_dir() -> Path:
    """The output directory Hydra gave this job."""
    return Path(HydraConfig.get().runtime.output_dir)


def hydra_app(program: str, stage: str, task: Task,
              run_name: Callable[[DictConfig], str] | None = None) -> Callable[[], None]:
    """A console-script entry point running ``task`` under Hydra, recording the params of DVC stage ``stage``."""

    @hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
    @exit_on_user_error(program)
    def main(cfg: DictConfig) -> float | None:
        hydra_cfg = HydraConfig.get()
        sweep_dir = Path(hydra_cfg.sweep.dir) if hydra_cfg.mode == RunMode.MULTIRUN else None
        parent = tracking.sweep_parent_run_id(sweep_dir) if sweep_dir else None
        try:
            metrics = run_job(cfg, program, task, metrics_path=job_dir() / METRICS_FILE, run_name=run_name,
                              parent_run_id=parent, params_of=stage)
        except (KeyboardInterrupt, SystemExit):  # the sweep is stopped: its end hook will not run
            if sweep_dir:
                tracking.end_parent_run(sweep_dir, tracking.KILLED)
            raise
        return metrics.get("top1")  # the value a Hydra sweeper optimises

    return main
