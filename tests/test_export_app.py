"""`fgq-export` and the `export` stage: packed files IntegerNet runs, measured as written, and the
saved PTQ weights that rebuild the calibrated model without calibrating again."""

import json
import os
import re
import subprocess

import numpy as np
import pytest
import torch
from conftest import (
    CIFAR10,
    ON_SMOKE_PROJECT,
    ON_TRAINED_DIGITS,
    cli,
    needs_shared,
    runs,
)
from omegaconf import OmegaConf

from fgq_pipeline.builders import build_datamodule
from fgq_pipeline.kernels import IntegerNet
from fgq_pipeline.kernels.torch_twin import torch_twin
from fgq_pipeline.models import CifarResNet, DigitsCNN, save_weights
from fgq_pipeline.params import compose_config
from fgq_pipeline.quant import ActQuantizer, post_training_quantize, quantize_model
from fgq_pipeline.runner import run_job
from fgq_pipeline.tasks.export import (
    PTQ_WEIGHTS,
    QUANT_METADATA,
    RECORDS_KEY,
    export_one,
    packed_path,
    saved_quantized_model,
)
from fgq_pipeline.tasks.ptq_grid import quant_config
from fgq_pipeline.train import evaluate
from fgq_pipeline.validation import exit_on_user_error

PRINTED = re.compile(r"^exported (\w+) N=(\d+) A(\d+) (\w+) scales: ([\d,]+) bytes, ([\d.]+) bits/weight -> (.+)$", re.MULTILINE)


def _logits(model, images):
    with torch.no_grad():
        return model.eval()(images)


def test_saved_ptq_weights_rebuild_the_calibrated_model_with_identical_logits(tmp_path):
    """GPTQ-rounded weights, bias corrections, re-estimated BatchNorm and MSE-calibrated activation
    scales all live in the state dict: a fresh model loading them needs no calibration."""
    cfg = compose_config(["debug=smoke"])
    quant = quant_config(cfg)
    torch.manual_seed(0)
    calibrated = quantize_model(DigitsCNN(tuple(cfg.model.channels)), quant)
    post_training_quantize(calibrated, quant, [(torch.randn(32, 1, 8, 8),) for _ in range(4)])
    path = save_weights(calibrated, tmp_path / PTQ_WEIGHTS, metadata={QUANT_METADATA: json.dumps(quant.to_dict())})

    reloaded = saved_quantized_model(cfg, "ptq", path)
    scales = [(m.scale.item(), bool(m.signed)) for m in reloaded.modules() if isinstance(m, ActQuantizer)]
    assert scales == [(m.scale.item(), bool(m.signed)) for m in calibrated.modules() if isinstance(m, ActQuantizer)]
    assert all(scale > 0 for scale, _ in scales)
    images = torch.randn(16, 1, 8, 8)
    assert torch.equal(_logits(reloaded, images), _logits(calibrated, images))

    with pytest.raises(ValueError, match=r"quantized at group_size=4, .* here has group_size=8"):
        saved_quantized_model(compose_config(["debug=smoke", "quant.group_size=8"]), "ptq", path)


def _fgq_export_job(cfg, out_dir):
    """`fgq-export` as its entry point runs it, in process, writing to ``out_dir``."""
    job = exit_on_user_error("fgq-export")(run_job)
    return job(cfg, "fgq-export", lambda cfg, log: export_one(cfg, log, out_dir),
               metrics_path=out_dir / "metrics.json", params_of="export")


@pytest.mark.parametrize(("override", "message"), [
    ("export.scale_dtype=fp64", "export.scale_dtype must be one of ('fp32', 'fp16', 'int8'), got 'fp64'"),
    ("export.source=fp32", "export.source must be one of ('ptq', 'finetuned'), got 'fp32'"),
    ("export.scale_dtypes=[fp32,fp32]", "export.scale_dtypes must be a non-empty list of distinct values"),
])
def test_a_bad_export_setting_exits_2_with_one_line_and_writes_nothing(override, message, tmp_path, monkeypatch,
                                                                      capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'store.db'}")
    cfg = compose_config(["debug=smoke", override])
    with pytest.raises(SystemExit) as exit_status:
        _fgq_export_job(cfg, tmp_path / "job")
    assert exit_status.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"fgq-export: error: {message}")
    assert not (tmp_path / "job").exists() and not (tmp_path / "store.db").exists()  # validation opens no run


def test_a_model_the_packed_format_cannot_hold_is_refused_before_it_is_built(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'store.db'}")
    cfg = compose_config(["debug=smoke", "quant.act_bits=32", f"paths.fp32_weights={tmp_path / 'missing.safetensors'}"])
    with pytest.raises(SystemExit):
        _fgq_export_job(cfg, tmp_path / "job")
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("fgq-export: error: ")]
    assert line == ("fgq-export: error: quant.act_bits=32 cannot be packed: the integer path needs integer "
                    "activations; export the ptq model at act_bits 2..8")
    assert not (tmp_path / "job").exists()
    (run,) = runs(tmp_path / "store.db", "fgq-digits")
    assert run.info.status == "FAILED" and run.data.params["export.source"] == "ptq"


@pytest.mark.slow
@ON_TRAINED_DIGITS
def test_fgq_export_writes_a_file_integer_net_runs_and_prints_its_size(trained_digits):
    tmp_path, env, common = trained_digits
    run_dir = tmp_path / "export"
    result = subprocess.run(cli("fgq-export") + common[:-1] + [f"hydra.run.dir={run_dir}"], env=env,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    ((source, group_size, act_bits, scale_dtype, size, bits, path),) = PRINTED.findall(result.stdout)
    assert (source, group_size, act_bits, scale_dtype) == ("ptq", "4", "8", "fp32")
    assert path == str(packed_path(run_dir, "ptq", "fp32"))  # in the job's directory, not the pipeline's
    assert int(size.replace(",", "")) == os.stat(path).st_size
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["file_bytes"] == os.stat(path).st_size and f"{record['bits_per_weight']:.2f}" == bits
    assert 2 < record["bits_per_weight"] < 32

    cfg = compose_config(["debug=smoke", f"data.root={tmp_path / 'data'}"])
    images, _ = next(iter(build_datamodule(cfg).test_dataloader()))
    integer_top1 = IntegerNet.load(path)(images.numpy()).argmax(axis=1)
    fake_quant = saved_quantized_model(cfg, "ptq", run_dir / PTQ_WEIGHTS)
    np.testing.assert_array_equal(integer_top1, _logits(fake_quant, images).argmax(dim=1).numpy())

    (run,) = [r for r in runs(tmp_path / "store.db", "fgq-digits") if r.data.tags["stage"] == "fgq-export"]
    assert run.info.status == "FINISHED" and run.data.params["export.scale_dtype"] == "fp32"
    assert run.data.metrics["file_bytes"] == record["file_bytes"]


@pytest.mark.slow
@ON_SMOKE_PROJECT
def test_export_stage_records_every_model_and_scale_dtype_as_written(smoke_project, monkeypatch):
    root, _ = smoke_project
    params = OmegaConf.load(root / "params.yaml")
    metrics = json.loads((root / params.paths.export_metrics).read_text())
    records = metrics[RECORDS_KEY]
    exports = root / params.paths.exports
    assert [(r["model"], r["scale_dtype"]) for r in records] == [
        (model, dtype) for model in params.export.models for dtype in params.export.scale_dtypes]
    for record in records:
        assert record["path"] == str(packed_path(params.paths.exports, record["model"], record["scale_dtype"]))
        assert record["file_bytes"] == (root / record["path"]).stat().st_size
        assert record["weights"] == (f"{params.paths.exports}/{PTQ_WEIGHTS}" if record["model"] == "ptq"
                                     else params.paths.finetuned_weights)
    by_file = {(r["model"], r["scale_dtype"]): r for r in records}
    assert by_file["ptq", "fp16"]["bits_per_weight"] < by_file["ptq", "fp32"]["bits_per_weight"]
    assert metrics["ptq.fp16.bits_per_weight"] == by_file["ptq", "fp16"]["bits_per_weight"]
    assert (by_file["ptq", "fp32"]["group_size"], by_file["finetuned", "fp32"]["group_size"]) == (
        params.quant.group_size, params.finetune.group_size)
    assert sorted(p.name for p in exports.iterdir()) == sorted([PTQ_WEIGHTS, *(f"{m}-{d}.fgq" for m, d in by_file)])

    # the saved PTQ weights are the ptq stage's headline model: same top-1 on the same test images
    monkeypatch.setenv("FGQ_PROJECT_ROOT", str(root))
    datamodule = build_datamodule(params)
    model = saved_quantized_model(params, "ptq", exports / PTQ_WEIGHTS)
    top1 = evaluate(model, datamodule.test_dataloader(), datamodule.num_classes)["top1"]
    assert top1 == json.loads((root / params.paths.ptq_metrics).read_text())["top1"]

    (run,) = [r for r in runs(root / "store.db", "fgq-digits") if r.data.tags["stage"] == "export"]
    assert run.data.metrics["finetuned.fp16.file_bytes"] == by_file["finetuned", "fp16"]["file_bytes"]


@pytest.mark.slow
@needs_shared
def test_fgq_export_runs_a_cifar_resnet_depth_and_checkpoint_it_never_saw(tmp_path):
    """ResNet-44 (6n+2, n=7: no test builds it elsewhere), saved as the published CIFAR checkpoints are
    (a DataParallel ``state_dict`` in a .th file), through the app a user runs, with no code for that
    depth: the file IntegerNet loads gives, logit for logit, what the pipeline scores."""
    torch.manual_seed(0)
    source = CifarResNet(depth=44).train()
    source(torch.randn(8, 3, 32, 32))  # BatchNorm statistics off their defaults, as a trained model's are
    checkpoint = tmp_path / "resnet44.th"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, checkpoint)
    overrides = ["data=cifar10", f"data.root={CIFAR10}", "data.subset_train=256", "data.subset_test=64",
                 "calibration.num_images=128", "model=cifar_resnet", "model.depth=44", f"model.checkpoint={checkpoint}"]
    run_dir = tmp_path / "export"
    result = subprocess.run(cli("fgq-export") + overrides + [f"hydra.run.dir={run_dir}"], capture_output=True,
                            text=True, check=False,
                            env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'store.db'}"})
    assert result.returncode == 0, result.stderr[-3000:]
    ((_, group_size, act_bits, _, _, _, path),) = PRINTED.findall(result.stdout)
    assert (group_size, act_bits) == ("4", "8")

    cfg = compose_config(overrides)
    images, _ = next(iter(build_datamodule(cfg).test_dataloader()))
    scored = saved_quantized_model(cfg, "ptq", run_dir / PTQ_WEIGHTS)
    with torch.no_grad():
        np.testing.assert_array_equal(IntegerNet.load(path)(images.numpy()), torch_twin(scored)(images).numpy())
