"""The pipeline end to end on a data subset: DVC stages, the Hydra apps, MLflow runs."""

import json
import math
import signal
import subprocess
from itertools import islice

import pandas as pd
import pytest
import torch
from conftest import ON_SMOKE_PROJECT, ON_TRAINED_DIGITS, cli, runs, signal_when
from omegaconf import OmegaConf
from safetensors.torch import load_file

from fgq_pipeline import tracking
from fgq_pipeline.builders import build_datamodule, build_model
from fgq_pipeline.cli.finetune import FINETUNED_WEIGHTS
from fgq_pipeline.params import compose_config
from fgq_pipeline.quant import quantize_model, reestimate_batchnorm
from fgq_pipeline.seeding import seed_everything
from fgq_pipeline.tasks.finetune import RUN_ID_KEY
from fgq_pipeline.tasks.ptq_grid import finetune_quant_config

RESUME_EPOCHS = 6  # several short epochs, so the kill lands mid-way
COMPARED_STAGES = ("baseline", "ptq", "finetune", "evaluate", "report")  # the writers of the files compared below


def test_tracked_run_that_raises_is_marked_failed(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'store.db'}")
    with pytest.raises(RuntimeError):
        with tracking.tracked_run("failing", "ptq", {"quant": {"group_size": 4}}):
            raise RuntimeError("boom")
    (run,) = runs(tmp_path / "store.db", "failing")
    assert run.info.status == "FAILED"
    assert run.data.params["quant.group_size"] == "4"
    assert run.data.tags["stage"] == "ptq"


def test_tracked_run_stopped_from_outside_is_marked_killed_with_its_child(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'store.db'}")
    with pytest.raises(KeyboardInterrupt):
        with tracking.tracked_run("stopped", "ptq", {}) as log, log.child_run("ptq", {}, "config"):
            raise KeyboardInterrupt
    assert sorted(run.info.status for run in runs(tmp_path / "store.db", "stopped")) == ["KILLED", "KILLED"]


@pytest.mark.slow
@ON_SMOKE_PROJECT
def test_dvc_repro_smoke_run_writes_the_report_for_the_whole_grid(smoke_project):
    root, _ = smoke_project
    params = OmegaConf.load(root / "params.yaml")
    reports = root / params.paths.reports
    table = pd.read_csv(reports / "results.csv")
    ptq = table[~table.finetuned]
    assert set(ptq.group_size.astype(str)) == {str(n) for n in params.ptq.group_size}
    assert set(ptq.act_bits) == set(params.ptq.act_bits)
    assert len(table[table.finetuned]) == 1
    assert table.top1.between(0, 1).all()
    for name in ("results.md", "top1_vs_group_size.png", "top1_vs_mult_eliminated.png"):
        assert (reports / name).stat().st_size > 0
    baseline = json.loads((root / "metrics" / "baseline.json").read_text())
    assert table.fp32_top1.tolist() == pytest.approx([baseline["fp32_top1"]] * len(table), abs=1e-6)


@pytest.mark.slow
@ON_SMOKE_PROJECT
def test_dvc_repro_smoke_run_benchmarks_the_integer_path_into_mlflow(smoke_project):
    root, _ = smoke_project
    params = OmegaConf.load(root / "params.yaml")
    summary = json.loads((root / params.paths.bench_metrics).read_text())
    assert {"compile_s", "cache_load_s", "idle", "gemv_vs_fp32.n4.t1", "network_b1_vs_fp32.n4.t1"} <= summary.keys()
    timings = pd.read_csv(root / params.paths.bench_reports / "bench.csv")
    assert set(timings.workload) == {"fc", "conv", "cifar_resnet8"}
    assert (timings.median_ms.dropna() > 0).all()
    (bench_run,) = [r for r in runs(root / "store.db", "fgq-digits") if r.data.tags["stage"] == "bench"]
    assert bench_run.data.metrics["gemv_vs_fp32.n4.t1"] == pytest.approx(summary["gemv_vs_fp32.n4.t1"])
    assert any(key.startswith("ms/numba_ternary/t1/cifar_resnet8/") for key in bench_run.data.metrics)


@pytest.mark.slow
@ON_SMOKE_PROJECT
def test_dvc_status_is_clean_after_repro_and_every_stage_is_a_finished_mlflow_run(smoke_project):
    root, env = smoke_project
    status = subprocess.run(["dvc", "status"], cwd=root, env=env, capture_output=True, text=True, check=True)
    assert "up to date" in status.stdout
    finished = runs(root / "store.db", "fgq-digits")
    stages = {run.data.tags["stage"] for run in finished}
    assert stages == {"prepare", "baseline", "ptq", "finetune", "evaluate", "export", "verify", "report", "cost_table",
                      "bench"}
    assert all(run.info.status == "FINISHED" for run in finished)
    ptq_children = [r for r in finished if r.data.tags["stage"] == "ptq" and "mlflow.parentRunId" in r.data.tags]
    reports = root / OmegaConf.load(root / "params.yaml").paths.reports
    assert len(ptq_children) == len(pd.read_csv(reports / "results.csv")) - 1


@pytest.mark.slow
@ON_SMOKE_PROJECT
def test_dvc_repro_of_every_stage_again_gives_byte_identical_metrics(smoke_project):
    """Seeds and deterministic algorithms: rerunning the stages (DVC deletes the outputs first)
    writes the same bytes. metrics/bench.json is left out: it holds timings; the export and verify
    metrics too, as those stages are not forced again (two more process starts for the suite; verify's
    records hold the integer path's images/s)."""
    root, env = smoke_project
    reports = root / OmegaConf.load(root / "params.yaml").paths.reports

    def outputs() -> dict[str, bytes]:
        files = [*(root / "metrics").glob("*.json"), *(root / "results").glob("*.json"), reports / "results.csv"]
        return {str(p.relative_to(root)): p.read_bytes() for p in files if p.name not in ("bench.json", "export.json", "verify.json")}

    first = outputs()
    assert len(first) >= 6
    subprocess.run(["dvc", "repro", "--force", "--single-item", *COMPARED_STAGES], cwd=root, env=env, check=True,
                   capture_output=True)
    assert outputs() == first


@pytest.mark.slow
@ON_TRAINED_DIGITS
def test_hydra_multirun_writes_metrics_per_job_grouped_under_one_parent_run(trained_digits):
    tmp_path, env, common = trained_digits
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        cli("fgq-ptq") + ["-m", "quant.group_size=4,64", "quant.act_bits=4", f"hydra.sweep.dir={sweep}"] + common,
        env=env, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
    assert sorted((m["group_size"], m["act_bits"]) for m in metrics) == [(4, 4), (64, 4)]
    assert all({"fp32_top1", "top1", "top5", "mult_eliminated"} <= m.keys() for m in metrics)
    all_runs = runs(tmp_path / "store.db", "fgq-digits")
    (parent,) = [r for r in all_runs if r.info.run_id == tracking.sweep_parent_run_id(sweep)]
    jobs = [r for r in all_runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(jobs) == 2
    assert all(r.info.status == "FINISHED" for r in jobs + [parent])
    assert sorted(r.data.metrics["top1"] for r in jobs) == sorted(m["top1"] for m in metrics)


@ON_TRAINED_DIGITS
def test_hydra_multirun_stopped_with_sigterm_ends_its_parent_run_and_the_job_under_way_killed(trained_digits):
    tmp_path, env, common = trained_digits
    sweep = tmp_path / "stopped_sweep"
    job = subprocess.Popen(
        cli("fgq-finetune") + ["-m", f"finetune.epochs={RESUME_EPOCHS}", "seed=0,1", f"hydra.sweep.dir={sweep}"] + common[:-1],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    stderr = signal_when(job, lambda: list(sweep.glob("*/checkpoints/last.ckpt")), signal.SIGTERM)
    assert job.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    all_runs = runs(tmp_path / "store.db", "fgq-digits")
    (parent,) = [r for r in all_runs if r.info.run_id == tracking.sweep_parent_run_id(sweep)]
    (stopped,) = [r for r in all_runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert (parent.info.status, stopped.info.status) == ("KILLED", "KILLED")


@pytest.mark.slow
@ON_TRAINED_DIGITS
def test_parallel_sweep_of_six_jobs_on_two_workers_loses_nothing(parallel_sweep):
    """joblib runs the jobs in two processes writing to the one SQLite store at once."""
    tmp_path, sweep, output = parallel_sweep
    assert "database is locked" not in output
    all_runs = runs(tmp_path / "store.db", "fgq-digits")
    (parent,) = [r for r in all_runs if r.info.run_id == tracking.sweep_parent_run_id(sweep)]
    jobs = [r for r in all_runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    configs = sorted((r.data.params["quant.group_size"], r.data.params["quant.act_bits"]) for r in jobs)
    assert configs == sorted((n, b) for n in ("4", "64") for b in ("32", "8", "4"))  # six runs, no duplicates
    assert all(r.info.status == "FINISHED" and "top1" in r.data.metrics for r in jobs)
    assert parent.info.status == "FINISHED"
    metrics = {(str(m["group_size"]), str(m["act_bits"])): m["top1"]
               for m in (json.loads(p.read_text()) for p in sweep.glob("*/metrics.json"))}
    assert {(r.data.params["quant.group_size"], r.data.params["quant.act_bits"]): r.data.metrics["top1"]
            for r in jobs} == metrics


@pytest.mark.slow
@ON_TRAINED_DIGITS
def test_fine_tuning_runs_under_ddp_on_two_cpu_processes(trained_digits):
    """Lightning DDP (spawned processes, gloo) from the CLI: a valid checkpoint and one MLflow run."""
    tmp_path, env, common = trained_digits
    run_dir = tmp_path / "ddp"
    result = subprocess.run(
        cli("fgq-finetune") + common[:-1] + [f"hydra.run.dir={run_dir}", "trainer.devices=2", "trainer.strategy=ddp_spawn"],
        env=env, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.5 < metrics["top1"] <= 1.0 and metrics["epochs"] == 1
    assert (run_dir / FINETUNED_WEIGHTS).is_file()  # in the job's directory, not the pipeline's models/
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    params = compose_config(["debug=smoke"])
    per_process = math.ceil(params.data.subset_train / 2)  # DistributedSampler halves the training split
    assert checkpoint["epoch"] == 0  # the first and only epoch, counted from 0
    assert checkpoint["global_step"] == math.ceil(per_process / params.data.batch_size)
    (run,) = [r for r in runs(tmp_path / "store.db", "fgq-digits")
              if r.data.tags["stage"] == "fgq-finetune" and r.data.params["trainer.devices"] == "2"]
    assert run.info.status == "FINISHED" and run.data.params["trainer.strategy"] == "ddp_spawn"


@ON_TRAINED_DIGITS
def test_fine_tune_on_holdout_trains_without_those_images_and_measures_on_them(trained_digits):
    """For choosing fine-tune settings without the test set: ``evaluate_on=holdout``."""
    tmp_path, env, common = trained_digits
    settings = common[:-1] + ["finetune.epochs=1", "holdout_images=200"]
    results = {}
    for split in ("test", "holdout"):
        run_dir = tmp_path / f"finetune-{split}"
        subprocess.run(cli("fgq-finetune") + settings + [f"hydra.run.dir={run_dir}", f"evaluate_on={split}"], env=env,
                       check=True, capture_output=True)
        results[split] = json.loads((run_dir / "metrics.json").read_text())
    assert results["holdout"]["evaluated_on"] == "holdout" and results["test"]["evaluated_on"] == "test"
    subset = compose_config(["debug=smoke"]).data.subset_train
    assert results["holdout"]["extra_training_fraction"] == pytest.approx(
        results["test"]["extra_training_fraction"] * (subset - 200) / subset)
    assert results["holdout"]["fp32_top1"] != results["test"]["fp32_top1"]  # other images
    tags = {r.data.tags["evaluated_on"] for r in runs(tmp_path / "store.db", "fgq-digits")
            if r.data.tags["stage"] == "fgq-finetune" and "evaluated_on" in r.data.tags}
    assert tags == {"test", "holdout"}


def test_fine_tune_ends_with_batchnorm_statistics_averaged_over_that_many_training_batches(trained_digits):
    """The momentum averages training leaves are replaced by an exact average over
    ``finetune.bn_reestimate_batches`` seeded training batches; the learned weights are untouched."""
    tmp_path, env, common = trained_digits
    settings = common[:-1] + ["finetune.epochs=1"]
    weights = {}
    for batches in (0, 3):
        run_dir = tmp_path / f"finetune-bn{batches}"
        subprocess.run(cli("fgq-finetune") + settings + [f"hydra.run.dir={run_dir}", f"finetune.bn_reestimate_batches={batches}"],
                       env=env, check=True, capture_output=True)
        weights[batches] = load_file(run_dir / FINETUNED_WEIGHTS)
    cfg = compose_config(settings)
    model = quantize_model(build_model(cfg, load_checkpoint=False), finetune_quant_config(cfg))
    model.load_state_dict(weights[0])
    datamodule = build_datamodule(cfg)
    seed_everything(cfg.seed)
    reestimate_batchnorm(model, islice(datamodule.train_dataloader(), 3))
    statistics = [k for k in weights[3] if k.endswith(("running_mean", "running_var"))]
    assert statistics and all(torch.equal(model.state_dict()[k], weights[3][k]) for k in statistics)
    assert not all(torch.equal(weights[0][k], weights[3][k]) for k in statistics)
    learned = [k for k, v in weights[3].items() if v.is_floating_point() and k not in statistics]
    assert learned and all(torch.equal(weights[0][k], weights[3][k]) for k in learned)


@pytest.mark.slow
@ON_TRAINED_DIGITS
def test_fine_tune_killed_mid_way_resumes_to_the_same_final_metrics(trained_digits):
    """SIGKILL once the first epoch's checkpoint is on disk, resume from it, compare with a run
    that was never interrupted: same top-1, same weights."""
    tmp_path, env, common = trained_digits
    settings = common[:-1] + [f"finetune.epochs={RESUME_EPOCHS}"]
    whole = tmp_path / "uninterrupted"
    subprocess.run(cli("fgq-finetune") + settings + [f"hydra.run.dir={whole}"], env=env, check=True, capture_output=True)

    killed = tmp_path / "killed"
    checkpoint = killed / "checkpoints" / "last.ckpt"
    job = subprocess.Popen(cli("fgq-finetune") + settings + [f"hydra.run.dir={killed}"], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    signal_when(job, checkpoint.exists, signal.SIGKILL)
    assert job.returncode == -signal.SIGKILL, "the fine-tune finished before it could be killed"
    assert not (killed / "metrics.json").exists()
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["epoch"] < RESUME_EPOCHS - 1  # epochs count from 0

    resumed = tmp_path / "resumed"
    subprocess.run(cli("fgq-finetune") + settings + [f"hydra.run.dir={resumed}", f"finetune.resume_from={checkpoint}"],
                   env=env, check=True, capture_output=True)
    expected = json.loads((whole / "metrics.json").read_text())
    assert json.loads((resumed / "metrics.json").read_text())["top1"] == expected["top1"]
    final = [torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"] for d in (whole, resumed)]
    assert final[0].keys() == final[1].keys()
    assert all(torch.equal(final[0][k], final[1][k]) for k in final[0])
    (killed_run,) = [r for r in runs(tmp_path / "store.db", "fgq-digits") if r.info.run_id == saved[RUN_ID_KEY]]
    assert killed_run.info.status == "KILLED"  # ended by the run that resumed it, not left RUNNING


@ON_TRAINED_DIGITS
def test_fine_tune_stopped_with_sigterm_ends_its_run_killed(trained_digits):
    """SIGTERM (kill, a scheduler) mid-way through training: the process exits 143 and its MLflow run
    ends KILLED instead of staying RUNNING."""
    tmp_path, env, common = trained_digits
    stopped = tmp_path / "sigterm"
    checkpoint = stopped / "checkpoints" / "last.ckpt"
    job = subprocess.Popen(cli("fgq-finetune") + common[:-1] + [f"finetune.epochs={RESUME_EPOCHS}", f"hydra.run.dir={stopped}"],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = signal_when(job, checkpoint.exists, signal.SIGTERM)
    assert job.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert not (stopped / "metrics.json").exists()
    run_id = torch.load(checkpoint, weights_only=True)[RUN_ID_KEY]
    (stopped_run,) = [r for r in runs(tmp_path / "store.db", "fgq-digits") if r.info.run_id == run_id]
    assert stopped_run.info.status == "KILLED"
