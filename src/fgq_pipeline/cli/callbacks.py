"""Hydra callback grouping a multirun's jobs under one MLflow parent run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from .. import tracking


class MlflowSweepCallback(Callback):
    """Open the parent run before the jobs start (they find its id in the sweep dir), close it after."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep = " ".join(config.hydra.overrides.task)
        tracking.start_parent_run(config.mlflow.experiment, f"sweep {sweep}", sweep_dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        tracking.end_parent_run(Path(config.hydra.sweep.dir))
