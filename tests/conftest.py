"""Helpers and fixtures shared by the tests: the CLI, the MLflow store, a trained digits model, a
parallel sweep, and the pipeline reproduced once on a data subset."""

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from fgq_pipeline.config_reads import TRACE_DIR_ENV
from fgq_pipeline.params import compose_config

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"  # real data and checkpoints, read-only, beside the checkout
CIFAR10 = SHARED / "data" / "cifar10"
RESNET20 = SHARED / "models" / "cifar10" / "resnet20-12fca82f.th"
RESNET32 = SHARED / "models" / "cifar10" / "resnet32-d509ac18.th"
needs_shared = pytest.mark.skipif(
    not ((CIFAR10 / "test.npz").exists() and RESNET20.is_file()),
    reason=f"{SHARED} (real CIFAR-10 data and checkpoints) is not present beside this checkout",
)
if os.environ.get("PYTEST_XDIST_WORKER"):
    # The xdist workers already fill the cores: one thread each (and in the processes they start),
    # so torch's and Numba's thread pools do not fight over them.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")
# Tests sharing an expensive session fixture run on one xdist worker, so it is built once.
ON_SMOKE_PROJECT = pytest.mark.xdist_group("smoke_project")
ON_TRAINED_DIGITS = pytest.mark.xdist_group("trained_digits")
PIPELINE_FILES = ("conf", "src", "stages", "dvc.yaml", ".dvc/config", ".dvc/.gitignore")


def cli(name: str) -> list[str]:
    script = shutil.which(name)
    return [script] if script else [sys.executable, "-m", f"fgq_pipeline.cli.{name.removeprefix('fgq-')}"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def signal_when(job: subprocess.Popen, ready: Callable[[], object], signum: int) -> str:
    """Send ``signum`` to ``job`` once ``ready()`` holds (or the job has ended); wait for it to exit and
    return its stderr (empty unless piped)."""
    while not ready() and job.poll() is None:
        time.sleep(0.02)
    job.send_signal(signum)
    _, stderr = job.communicate()
    return stderr or ""


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


# --------------------------------------------------------------------------------------------------
# Result records for the report tests
# --------------------------------------------------------------------------------------------------

GROUP_SIZES = [1, 4, 64, "filter"]
FULL_GRID_GROUP_SIZES = [1, 2, 4, 8, 16, 32, 64, "filter", "layer"]
ACT_BITS = [32, 8, 4]
MULT_ELIMINATED = {
    1: 0.0, 2: 0.5, 4: 0.75, 8: 0.875, 16: 0.9375, 32: 0.96875, 64: 0.984375,
    "filter": 0.99, "layer": 0.995,
}
BITS_PER_WEIGHT = {
    1: 9.0, 2: 5.0, 4: 3.5, 8: 2.75, 16: 2.4, 32: 2.2, 64: 2.125, "filter": 2.01, "layer": 2.0,
}
FP32_TOP1 = 0.9833
DEFAULT_VARIANT = {
    "weight_format": "ternary",
    "scale_dtype": "fp32",
    "solver": "exact",
    "rounding": "nearest",
    "act_calibration": "max",
    "policy": "first_last_8bit",
    "bn_reestimate": True,
    "bias_correction": False,
}
REPAIRS = {"bn_reestimate": True, "bias_correction": True}
# Full-grid variants of the realistic set, with how far each sits below variant D in top-1.
FULL_GRID_VARIANTS = {
    "A": ({"bn_reestimate": False, "bias_correction": False}, 0.030),
    "B": (REPAIRS, 0.010),
    "C": ({"solver": "twn", **REPAIRS}, 0.020),
    "D": ({"rounding": "gptq", "act_calibration": "mse", **REPAIRS}, 0.0),
}
# Variants run only at N=4 with 8- and 4-bit activations.
ABLATION_VARIANTS = {
    "E": ({"rounding": "gptq", **REPAIRS}, 0.005),
    "F": ({"act_calibration": "mse", **REPAIRS}, 0.007),
    "G": ({"rounding": "gptq", "act_calibration": "mse", "bn_reestimate": True}, 0.004),
    "H": (
        {"rounding": "gptq", "act_calibration": "mse", "policy": "ternarize_all", **REPAIRS},
        0.015,
    ),
}


def make_record(group_size, act_bits, **overrides) -> dict:
    """A plausible record: accuracy drops as groups grow and activations get narrower."""
    group_index = FULL_GRID_GROUP_SIZES.index(group_size)
    fp32_top1 = overrides.get("fp32_top1", FP32_TOP1)
    top1 = fp32_top1 - 0.004 * group_index - (0.0 if act_bits == 32 else 0.01 * (8 / act_bits))
    record = {
        "model": "digits_cnn",
        "dataset": "digits",
        "group_size": group_size,
        "act_bits": act_bits,
        **DEFAULT_VARIANT,
        "finetuned": False,
        "top1": top1,
        "top5": 0.999,
        "fp32_top1": fp32_top1,
        "mult_eliminated": MULT_ELIMINATED[group_size],
        "bits_per_weight": BITS_PER_WEIGHT[group_size],
        "potential_speedup": 1.0 + 15.0 * MULT_ELIMINATED[group_size],
    }
    record.update(overrides)
    return record


def variant_records(name: str, group_sizes, act_bits, **overrides) -> list[dict]:
    """The records of one named variant, ``drop`` below the best variant at every cell."""
    variant, drop = {**FULL_GRID_VARIANTS, **ABLATION_VARIANTS}[name]
    records = []
    for size in group_sizes:
        for bits in act_bits:
            record = make_record(size, bits, **{**variant, **overrides})
            record["top1"] -= drop
            records.append(record)
    return records


def realistic_records(**overrides) -> list[dict]:
    """One model's grid as the PTQ stage now writes it: four full-grid variants, N=4 ablations
    and one fine-tuned row."""
    records = []
    for name in FULL_GRID_VARIANTS:
        records += variant_records(name, FULL_GRID_GROUP_SIZES, ACT_BITS, **overrides)
    for name in ABLATION_VARIANTS:
        records += variant_records(name, [4], [8, 4], **overrides)
    fp32_top1 = overrides.get("fp32_top1", FP32_TOP1)
    finetuned = make_record(64, 8, **REPAIRS, **overrides)
    finetuned.update(finetuned=True, top1=fp32_top1 - 0.012, extra_training_fraction=1 / 30)
    return [*records, finetuned]


def two_model_records() -> list[dict]:
    return [
        *realistic_records(model="cifar_resnet20", dataset="cifar10", fp32_top1=0.917),
        *realistic_records(model="cifar_resnet32", dataset="cifar10", fp32_top1=0.927),
    ]


@pytest.fixture
def records() -> list[dict]:
    """The PTQ grid in a scrambled order plus one fine-tuned row with an extra key."""
    grid = [make_record(size, bits) for bits in (4, 32, 8) for size in reversed(GROUP_SIZES)]
    finetuned = make_record(4, 8, finetuned=True, top1=0.9801, extra_training_fraction=0.1)
    return [finetuned, *grid]
