"""The team setup: MLflow on a real PostgreSQL (started here, on loopback) instead of SQLite, with a
parallel sweep writing to it. Skips, saying why, where PostgreSQL or psycopg is not installed."""

import getpass
import glob
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import ON_TRAINED_DIGITS, free_port, run_parallel_sweep
from mlflow.tracking import MlflowClient

from fgq_pipeline import tracking

PG_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
SERVICE_USER = "postgres"  # PostgreSQL refuses to run as root; Debian's package creates this user
START_S = 60

pytestmark = [
    pytest.mark.slow,
    ON_TRAINED_DIGITS,
    pytest.mark.skipif(not PG_BIN, reason="PostgreSQL server binaries are not installed (apt-get install postgresql)"),
]
pytest.importorskip("psycopg", reason="psycopg (the PostgreSQL driver MLflow uses) is not installed")


def as_service_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", SERVICE_USER, "--"] + command if getpass.getuser() == "root" else command


@pytest.fixture
def postgres_uri():
    """A throwaway cluster with trust authentication on 127.0.0.1, and its database URI."""
    binaries = Path(PG_BIN[-1])
    root = Path(tempfile.mkdtemp(prefix="fgq-postgres-"))  # outside pytest's root-only tmp tree
    data, port = root / "data", free_port()
    if getpass.getuser() == "root":
        shutil.chown(root, SERVICE_USER)
    try:
        subprocess.run(as_service_user([str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", "fgq"]),
                       check=True, capture_output=True)
        subprocess.run(as_service_user([str(binaries / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w",
                                        "-t", str(START_S), "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1",
                                        "start"]), check=True, capture_output=True)
        subprocess.run([str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "fgq", "mlflow"],
                       check=True, capture_output=True)
        yield f"postgresql://fgq@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run(as_service_user([str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                       check=False, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_parallel_sweep_into_postgresql(trained_digits, postgres_uri):
    tmp_path, env, common = trained_digits
    env = {**env, "MLFLOW_TRACKING_URI": postgres_uri}
    sweep = tmp_path / "postgres-sweep"
    run_parallel_sweep(sweep, "8", env, common)  # two jobs, one per worker, writing at once
    client = MlflowClient(postgres_uri)
    experiment = client.get_experiment_by_name("fgq-digits")
    jobs = client.search_runs([experiment.experiment_id],
                              f"tags.mlflow.parentRunId = '{tracking.sweep_parent_run_id(sweep)}'")
    assert sorted((r.data.params["quant.group_size"], r.data.params["quant.act_bits"]) for r in jobs) == [
        ("4", "8"), ("64", "8")]
    assert all(r.info.status == "FINISHED" and "top1" in r.data.metrics for r in jobs)
