"""The `ptq` stage killed mid-grid and run again: the configurations it finished are not measured
again, entries of other inputs are never read, the results are the bytes of an uninterrupted run,
and no MLflow run is left RUNNING."""

import json
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from conftest import REPO, runs, signal_when
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from fgq_pipeline.builders import build_model
from fgq_pipeline.models import DigitsCNN
from fgq_pipeline.params import compose_config
from fgq_pipeline.quant import QuantConfig
from fgq_pipeline.quant.config import ReconstructConfig
from fgq_pipeline.runner import run_job
from fgq_pipeline.tasks.baseline import train_baseline
from fgq_pipeline.tasks.prepare import prepare_data
from fgq_pipeline.tasks.ptq_grid import ptq_grid, reconstruct_config
from fgq_pipeline.tasks.ptq_grid_run import RESUMED_TAG
from fgq_pipeline.tasks.ptq_progress import GRID_RUN_SUFFIX, FinishedConfigs, grid_inputs, weights_digest
from fgq_pipeline.tracking import PARENT_TAG, RunLog, end_interrupted_runs, tracking_uri, use_experiment

# cfg.quant (both repairs; nearest rounding and max calibration, the fast ones) at 2 group sizes x
# 2 act bits: 4 configs, each weight-side repair shared by two, so a kill after the first leaves its
# partner to a run without that sharing.
OVERRIDES = ["debug=smoke", "quant.rounding=nearest", "quant.act_calibration=max"]
GRID = {"group_size": [4, 64], "act_bits": [8, 4], "variants": [{}]}
CHANGED_INPUTS = (["seed=1"], ["calibration.num_images=64"])


@pytest.fixture
def ptq_project(tmp_path, monkeypatch):
    """A project on the smoke config with that grid, its data prepared and FP32 model trained."""
    cfg = compose_config(OVERRIDES)
    cfg.ptq = GRID
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    (root / "params.yaml").write_text(OmegaConf.to_yaml(cfg))
    monkeypatch.setenv("FGQ_PROJECT_ROOT", str(root))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'store.db'}")
    run_job(cfg, "prepare", prepare_data, metrics_path=root / cfg.paths.data_manifest)
    run_job(cfg, "baseline", train_baseline)
    return root, cfg


def ptq_stage() -> list[str]:
    return [sys.executable, str(REPO / "stages" / "ptq.py")]


def run_ptq_stage(root) -> str:
    """Its output (the progress lines go to stdout, tqdm's bars to stderr)."""
    result = subprocess.run(ptq_stage(), cwd=root, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def finished_entries(progress) -> list:
    """The entry files written so far (not the temporary files of a write under way)."""
    return [p for p in progress.glob("*/*.json") if not p.name.startswith(".")]


@pytest.mark.slow
def test_ptq_stage_killed_mid_grid_resumes_to_the_results_of_an_uninterrupted_run(ptq_project):
    root, cfg = ptq_project
    grid = ptq_grid(cfg)
    progress = root / cfg.paths.ptq_progress
    outputs = [root / cfg.paths.ptq_results, root / cfg.paths.ptq_metrics]
    run_ptq_stage(root)
    uninterrupted = [path.read_bytes() for path in outputs]
    assert not progress.exists()  # a finished grid leaves nothing to resume
    for path in outputs:
        path.unlink()

    job = subprocess.Popen(ptq_stage(), cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    signal_when(job, lambda: finished_entries(progress), signal.SIGKILL)
    assert job.returncode == -signal.SIGKILL, "the grid finished before it could be killed"
    entries = [json.loads(path.read_text()) for path in finished_entries(progress)]
    assert 1 <= len(entries) < len(grid)

    model = build_model(cfg)
    finished = FinishedConfigs(progress, grid_inputs(cfg, model), reconstruct_config(cfg))
    assert sum(finished.load(quant) is not None for quant in grid) == len(entries)
    for change in CHANGED_INPUTS:
        changed_cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(change))
        changed = FinishedConfigs(progress, grid_inputs(changed_cfg, model), reconstruct_config(changed_cfg))
        assert all(changed.load(quant) is None for quant in grid), change

    log = run_ptq_stage(root)
    assert f"PTQ grid: {len(entries)} of {len(grid)} configurations resumed" in log
    assert [path.read_bytes() for path in outputs] == uninterrupted
    assert not progress.exists()

    store = runs(root / "store.db", cfg.mlflow.experiment)
    (resumed_run,) = [r for r in store if r.data.tags.get("resumed_configs") == str(len(entries))]
    children = [r for r in store if r.data.tags.get("mlflow.parentRunId") == resumed_run.info.run_id]
    assert len(children) == len(grid) and all(r.info.status == "FINISHED" for r in children)
    measured_by = {r.data.tags[RESUMED_TAG]: r for r in children if RESUMED_TAG in r.data.tags}
    assert measured_by.keys() == {entry["run_id"] for entry in entries}
    for entry in entries:
        assert measured_by[entry["run_id"]].data.metrics["top1"] == entry["record"]["top1"]
    by_id = {r.info.run_id: r for r in store}
    (interrupted,) = {by_id[entry["run_id"]].data.tags[PARENT_TAG] for entry in entries}
    assert by_id[interrupted].info.status == "KILLED"
    assert [r.info.run_name for r in store if r.info.status == "RUNNING"] == []  # the config under way too


def test_a_grid_killed_before_its_first_configuration_finished_is_ended_by_the_rerun(ptq_project):
    root, cfg = ptq_project
    progress = root / cfg.paths.ptq_progress
    job = subprocess.Popen(ptq_stage(), cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    signal_when(job, lambda: list(progress.glob(f"*/*{GRID_RUN_SUFFIX}")), signal.SIGKILL)
    assert job.returncode == -signal.SIGKILL, "the grid finished before it could be killed"
    assert finished_entries(progress) == [], "a configuration finished before the kill"
    (killed_grid,) = [r for r in runs(root / "store.db", cfg.mlflow.experiment) if r.info.status == "RUNNING"]

    log = run_ptq_stage(root)
    assert "PTQ grid: 0 of 4 configurations resumed" in log
    store = {r.info.run_id: r for r in runs(root / "store.db", cfg.mlflow.experiment)}
    assert store[killed_grid.info.run_id].info.status == "KILLED"
    assert [r.info.run_name for r in store.values() if r.info.status == "RUNNING"] == []
    assert not progress.exists()


def test_ptq_stage_stopped_with_sigterm_ends_the_grid_and_the_configuration_under_way_killed(ptq_project):
    root, cfg = ptq_project
    progress = root / cfg.paths.ptq_progress
    job = subprocess.Popen(ptq_stage(), cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = signal_when(job, lambda: finished_entries(progress), signal.SIGTERM)
    assert job.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert not (root / cfg.paths.ptq_results).exists()

    store = runs(root / "store.db", cfg.mlflow.experiment)
    (grid_run,) = [r for r in store if r.data.tags.get("stage") == "ptq" and PARENT_TAG not in r.data.tags]
    children = [r for r in store if r.data.tags.get(PARENT_TAG) == grid_run.info.run_id]
    assert grid_run.info.status == "KILLED"
    assert children and {r.info.status for r in children} <= {"FINISHED", "KILLED"}  # the one under way KILLED
    assert [r.info.run_name for r in store if r.info.status == "RUNNING"] == []


@pytest.mark.parametrize("tensor", ["classifier.weight", "features.1.running_mean"])
def test_weights_digest_follows_every_weight_and_buffer(tensor):
    torch.manual_seed(0)
    model = DigitsCNN()
    twin = DigitsCNN()
    twin.load_state_dict(model.state_dict())
    assert weights_digest(twin) == weights_digest(model)
    twin.state_dict()[tensor].view(-1)[0] += 1e-6  # state_dict tensors share the model's storage
    assert weights_digest(twin) != weights_digest(model)


def test_new_reconstruct_settings_remeasure_the_reconstruct_rows_only(tmp_path):
    inputs = {"seed": 0}
    nearest, reconstructed = QuantConfig(rounding="nearest"), QuantConfig(rounding="reconstruct")
    finished = FinishedConfigs(tmp_path, inputs, ReconstructConfig())
    for quant in (nearest, reconstructed):
        finished.save(quant, {"top1": 0.5}, run_id="measured")
    changed = FinishedConfigs(tmp_path, inputs, ReconstructConfig(iterations=7))
    assert changed.load(nearest)["run_id"] == "measured"
    assert changed.load(reconstructed) is None


def test_a_resuming_run_ends_only_the_interrupted_run_and_its_children_under_way(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'store.db'}")
    client = MlflowClient(tracking_uri())
    experiment = use_experiment(client, "resume")

    def start(name, parent=None):
        return client.create_run(experiment, run_name=name, tags={PARENT_TAG: parent} if parent else {}).info.run_id

    interrupted = start("interrupted grid")
    measured = start("measured config", interrupted)
    client.set_terminated(measured, "FINISHED")
    under_way = start("config under way", interrupted)
    unrelated = start("another grid")
    resuming = RunLog(client, experiment, start("resuming grid"))

    assert end_interrupted_runs(resuming, [interrupted, "0" * 32, None]) == [under_way, interrupted]
    statuses = {run: client.get_run(run).info.status for run in (interrupted, measured, under_way, unrelated)}
    assert statuses == {interrupted: "KILLED", measured: "FINISHED", under_way: "KILLED", unrelated: "RUNNING"}
    assert end_interrupted_runs(resuming, [interrupted, resuming.run_id]) == []  # ended once; never itself
