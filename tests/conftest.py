"""Helpers and fixtures shared by the tests: the CLI, the MLflow store, a trained digits model, a
parallel sweep, and the pipeline reproduced once on a data subset."""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from fgq_pipeline.config_reads import TRACE_DIR_ENV
from fgq_pipeline.params import compose_config

REPO = Path(__file__).resolve().parents[1]
PIPELINE_FILES = ("conf", "src", "stages", "dvc.yaml", ".dvc/config", ".dvc/.gitignore")


def cli(name: str) -> list[str]:
    script = shutil.which(name)
    return [script] if script else [sys.executable, "-m", f"fgq_pipeline.cli.{name.removeprefix('fgq-')}"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def runs(store: Path, experiment: str):
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=1000)


def run_parallel_sweep(sweep: Path, act_bits: str, env: dict, common: list[str]) -> subprocess.CompletedProcess:
    """`fgq-ptq -m` over N in {4, 64} x ``act_bits`` on two joblib workers; it must succeed."""
    result = subprocess.run(
        cli("fgq-ptq") + ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "quant.group_size=4,64",
                          f"quant.act_bits={act_bits}", f"hydra.sweep.dir={sweep}"] + common,
        env=env, capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="session")
def trained_digits(tmp_path_factory):
    """FP32 digits weights from `fgq-train debug=smoke`, and the overrides that point jobs at them."""
    tmp_path = tmp_path_factory.mktemp("cli")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'store.db'}"}
    common = ["debug=smoke", f"data.root={tmp_path / 'data'}", f"paths.fp32_weights={tmp_path / 'fp32.safetensors'}",
              f"hydra.run.dir={tmp_path / 'train'}"]
    subprocess.run(cli("fgq-train") + common, env=env, check=True, capture_output=True)
    return tmp_path, env, common


@pytest.fixture(scope="session")
def parallel_sweep(trained_digits):
    """Six `fgq-ptq` jobs (N in {4, 64} x act_bits in {32, 8, 4}) on two joblib workers, one store."""
    tmp_path, env, common = trained_digits
    sweep = tmp_path / "parallel"
    result = run_parallel_sweep(sweep, "32,8,4", env, common)
    return tmp_path, sweep, result.stdout + result.stderr


@pytest.fixture(scope="session")
def smoke_project(tmp_path_factory):
    """A copy of the pipeline with the `debug=smoke` params, reproduced once with `dvc repro`; each
    stage's config reads are recorded in ``trace/<stage>.json``."""
    root = tmp_path_factory.mktemp("project")
    for name in PIPELINE_FILES:
        source, target = REPO / name, root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(source, target)
    (root / "params.yaml").write_text(OmegaConf.to_yaml(compose_config(["debug=smoke"])))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'store.db'}", TRACE_DIR_ENV: str(root / "trace")}
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    result = subprocess.run(["dvc", "repro"], cwd=root, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root, env
