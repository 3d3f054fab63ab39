"""The one way a job runs, for every DVC stage and every Hydra app: validate the config, open the
tracked MLflow run with the parameters ``dvc.yaml`` declares for the stage, run the task with that
run to log to, log its metrics and write them as JSON atomically. A config that fails validation
opens no run; a failure during the run marks it FAILED and writes no metrics; a user error ends
with one line and exit status 2; Ctrl-C or SIGTERM (``kill``, a batch scheduler) ends the run, and any
child run under way, as KILLED, and the process exits non-zero (143 for SIGTERM)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

from . import tracking
from .config_reads import recording_config_reads
from .dvc_stages import stage_params
from .params import load_params
from .project import write_json
from .stop_signals import stop_signals_raise
from .validation import exit_on_user_error, validate_config

Task = Callable[[DictConfig, tracking.RunLog], dict]


def run_job(
    cfg: DictConfig,
    stage: str,
    task: Task,
    metrics_path: str | Path | None = None,
    run_name: Callable[[DictConfig], str] | None = None,
    parent_run_id: str | None = None,
    params_of: str | None = None,
) -> dict:
    """Run ``task`` as one MLflow run tagged ``stage`` (named ``run_name(cfg)``, else ``stage``),
    recording the params that DVC stage ``params_of`` (default: ``stage``) declares; its metrics
    go to ``metrics_path`` if given."""
    validate_config(cfg)
    params = stage_params(cfg, params_of or stage)
    name = run_name(cfg) if run_name else stage
    with stop_signals_raise(), tracking.tracked_run(cfg.mlflow.experiment, stage, params, name, parent_run_id) as log:
        with recording_config_reads(cfg, stage):
            metrics = task(cfg, log)
        log.log_metrics(metrics)
        if metrics_path is not None:
            log.log_artifact(write_json(metrics_path, metrics))
    return metrics


def run_stage(stage: str, task: Task, metrics_path_key: str | None = None) -> None:
    """The body of ``stages/<stage>.py``: ``task`` on params.yaml; metrics to ``paths.<metrics_path_key>``."""

    @exit_on_user_error(f"stage {stage}")
    def main() -> None:
        cfg = load_params()
        run_job(cfg, stage, task, metrics_path=cfg.paths[metrics_path_key] if metrics_path_key else None)

    main()
