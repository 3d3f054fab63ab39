"""MLflow tracking: one project-wide store, one run per stage or CLI job, sweeps under a parent run.

The store defaults to a SQLite file at the project root so every stage, CLI run and sweep of a
checkout lands in one place; ``MLFLOW_TRACKING_URI`` points it elsewhere (e.g. a team server).
Tasks receive a :class:`RunLog` for the run they log to, rather than reaching for MLflow's global
active run, so the same task logs correctly as a stage, a CLI job or a sweep's child.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from .project import project_root

RUNNING, FINISHED, FAILED, KILLED = (RunStatus.to_string(status) for status in (
    RunStatus.RUNNING, RunStatus.FINISHED, RunStatus.FAILED, RunStatus.KILLED))

STORE_FILE = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
PARENT_RUN_FILE = "mlflow_parent_run_id"
PARENT_TAG = "mlflow.parentRunId"
MAX_PARAMS_PER_BATCH, MAX_METRICS_PER_BATCH = 100, 1000  # MLflow's log_batch limits


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / STORE_FILE}"


def use_experiment(client: MlflowClient, name: str) -> str:
    """The id of experiment ``name`` in the project store, created on first use."""
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


@functools.cache  # one process, one checkout: a grid's hundreds of child runs ask git once
def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=project_root(), capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def numeric_metrics(metrics: Mapping[str, object]) -> dict[str, float]:
    """The numeric entries of ``metrics`` (strings and flags are params or tags, not metrics)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


@dataclass(frozen=True)
class RunLog:
    """One MLflow run that a task logs to."""

    client: MlflowClient
    experiment_id: str
    run_id: str

    @property
    def tracking_uri(self) -> str:
        return self.client.tracking_uri

    def log_metrics(self, metrics: Mapping[str, object]) -> None:
        now = int(time.time() * 1000)
        entries = [Metric(key, value, now, 0) for key, value in numeric_metrics(metrics).items()]
        for start in range(0, len(entries), MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=entries[start:start + MAX_METRICS_PER_BATCH])

    def log_params(self, params: Mapping[str, str]) -> None:
        entries = [Param(key, value) for key, value in params.items()]
        for start in range(0, len(entries), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=entries[start:start + MAX_PARAMS_PER_BATCH])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str | Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    @contextmanager
    def child_run(self, stage: str, params: Mapping, run_name: str) -> Iterator[RunLog]:
        """A run nested under this one (a grid configuration, a sweep job)."""
        with _run(self.client, self.experiment_id, stage, params, run_name, parent_run_id=self.run_id) as child:
            yield child


@contextmanager
def tracked_run(
    experiment: str, stage: str, params: Mapping, run_name: str | None = None, parent_run_id: str | None = None,
) -> Iterator[RunLog]:
    """A run tagged with stage, git commit and params hash; FINISHED, FAILED if the body raises, KILLED
    if the process is stopped (KeyboardInterrupt or SystemExit inside the run)."""
    client = MlflowClient(tracking_uri())
    with _run(client, use_experiment(client, experiment), stage, params, run_name or stage, parent_run_id) as log:
        yield log


@contextmanager
def _run(client: MlflowClient, experiment_id: str, stage: str, params: Mapping, run_name: str,
         parent_run_id: str | None) -> Iterator[RunLog]:
    tags = {"stage": stage, "git_commit": git_commit(), "params_hash": params_hash(params)}
    if parent_run_id:
        tags[PARENT_TAG] = parent_run_id
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    log = RunLog(client, experiment_id, run.info.run_id)
    status = FAILED
    try:
        log.log_params(flatten(params))
        yield log
        status = FINISHED
    except (KeyboardInterrupt, SystemExit):  # stopped from outside: Ctrl-C, or SIGTERM (see stop_signals)
        status = KILLED
        raise
    finally:
        client.set_terminated(log.run_id, status)


def end_interrupted_runs(log: RunLog, run_ids: Iterable[str | None]) -> list[str]:
    """End as KILLED those of ``run_ids`` still RUNNING, with their children still RUNNING: a process
    killed outright (SIGKILL, a session or machine going away) cannot end its own runs, so the run that
    takes over their work (``log``: a resumed grid or fine-tune) does. Returns the ids it ended."""
    ended = []
    for run_id in sorted({run_id for run_id in run_ids if run_id} - {log.run_id}):
        try:
            run = log.client.get_run(run_id)
        except MlflowException:  # recorded by another store
            continue
        if run.info.status != RUNNING:
            continue
        children = log.client.search_runs(
            [run.info.experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{run_id}' and attributes.status = '{RUNNING}'",
        )
        for killed in [child.info.run_id for child in children] + [run_id]:
            log.client.set_terminated(killed, KILLED)
            ended.append(killed)
    return ended


def start_parent_run(experiment: str, run_name: str, sweep_dir: Path) -> str:
    """Open the parent run of a sweep and leave its id in the sweep directory for the jobs."""
    client = MlflowClient(tracking_uri())
    tags = {"stage": "sweep", "git_commit": git_commit()}
    run = client.create_run(use_experiment(client, experiment), run_name=run_name, tags=tags)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / PARENT_RUN_FILE).write_text(run.info.run_id)
    return run.info.run_id


def sweep_parent_run_id(sweep_dir: Path) -> str | None:
    path = sweep_dir / PARENT_RUN_FILE
    return path.read_text().strip() if path.exists() else None


def end_parent_run(sweep_dir: Path, status: str = FINISHED) -> None:
    run_id = sweep_parent_run_id(sweep_dir)
    if run_id:
        MlflowClient(tracking_uri()).set_terminated(run_id, status)
