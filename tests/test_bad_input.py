"""Every row of the README's bad-input table, tried as a user would.

Rows that config validation catches are checked against that validation, which the runner does
before it opens a run. Rows that only the data or the model reveal go through the runner as
`fgq-ptq` calls it: each must end with exit status 2, one message naming the bad value, no metrics
file, and the MLflow run marked FAILED. Three rows (one of each kind) run through the CLI itself,
where the message must come without a traceback.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from fgq_pipeline.models import CifarResNet, DigitsCNN, save_weights, torchvision_model
from fgq_pipeline.params import compose_config
from fgq_pipeline.runner import run_job
from fgq_pipeline.tasks.ptq import run_ptq
from fgq_pipeline.validation import exit_on_user_error, validate_config


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The bad (and good) files the rows point at."""
    root = tmp_path_factory.mktemp("inputs")
    (root / "empty").mkdir()
    (root / "corrupt_npz").mkdir()
    for split in ("train", "test"):
        (root / "corrupt_npz" / f"{split}.npz").write_bytes(b"PK\x03\x04 this is not an archive")
    for split in ("train", "val"):
        for label in ("cat", "dog"):
            folder = root / "images" / split / label
            folder.mkdir(parents=True)
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "good.png")
        (folder / "broken.png").write_bytes(b"\x89PNG truncated")
    (root / "corrupt.safetensors").write_bytes(b"\x00" * 64)
    torch.manual_seed(0)
    save_weights(CifarResNet(8), root / "resnet8.safetensors")
    save_weights(torchvision_model("resnet18", num_classes=2), root / "resnet18.safetensors")
    nan_model = DigitsCNN()
    with torch.no_grad():
        nan_model.classifier.weight[0, 0] = float("nan")
    save_weights(nan_model, root / "nan.safetensors")
    (root / "a_file").write_text("not a directory")
    return root


RESNET8 = ["model=cifar_resnet", "model.depth=8"]
CONFIG_ROWS = {
    "group_size 0": (["quant.group_size=0"], "got 0"),
    "group_size negative": (["quant.group_size=-4"], "got -4"),
    "group_size not an integer": (["quant.group_size=2.5"], "got 2.5"),
    "act_bits outside 2..8, 32": (["quant.act_bits=12"], "act_bits must be an integer in 2..8, or 32 for float activations, got 12"),
    "unknown solver": (["quant.solver=magic"], "'magic'"),
    "unknown policy": (["quant.policy=everything"], "'everything'"),
    "empty calibration set": (["calibration.num_images=0"], "calibration.num_images must be a positive integer, got 0"),
    "unknown calibration transform": (["calibration.augment=random"],
                                      ("calibration.augment must be auto (the model's training transform), true or "
                                       "false, got 'random'")),
    "unknown export scale dtype": (["export.scale_dtype=fp64"],
                                   "export.scale_dtype must be one of ('fp32', 'fp16', 'int8'), got 'fp64'"),
    "unknown export source": (["export.source=fp32"], "export.source must be one of ('ptq', 'finetuned'), got 'fp32'"),
    "negative BatchNorm re-estimation": (["finetune.bn_reestimate_batches=-1"],
                                         "finetune.bn_reestimate_batches must be 0 or a positive integer, got -1"),
    "unknown device": (["device=gpu"], "device must be auto, cpu, cuda or cuda:<index>, got 'gpu'"),
    "unwritable output directory": (["paths.ptq_results={files}/a_file/ptq.json"], "a_file is a file, not a directory"),
}
DATA_ROWS = {
    "missing data directory": (["data=cifar10", "data.root={files}/missing"], "missing (no such directory)"),
    "empty data directory": (["data=cifar10", "data.root={files}/empty"], "'test.npz'] are not in"),
    "corrupt npz": (["data=cifar10", "data.root={files}/corrupt_npz"], "not a readable npz archive"),
    "corrupt image": (["data=imagefolder", "data.root={files}/images", "data.num_workers=0", "model=torchvision",
                       "model.arch=resnet18", "model.num_classes=2", "model.checkpoint={files}/resnet18.safetensors"],
                      "broken.png cannot be decoded"),
    "corrupt checkpoint": (["model.checkpoint={files}/corrupt.safetensors"], "corrupt.safetensors could not be read"),
    "checkpoint of another depth": (["model=cifar_resnet", "model.depth=14", "model.checkpoint={files}/resnet8.safetensors"],
                                    "does not fit CifarResNet: missing keys"),
    "checkpoint with another class count": (RESNET8 + ["model.num_classes=100", "model.checkpoint={files}/resnet8.safetensors"],
                                            "linear.weight: checkpoint (10, 64) vs model (100, 64)"),
    "NaN weights": (["model.checkpoint={files}/nan.safetensors"], "NaN or Inf values in tensors ['classifier.weight']"),
}
CLI_ROWS = {row: {**CONFIG_ROWS, **DATA_ROWS}[row] for row in ("group_size 0", "missing data directory", "NaN weights")}


def fgq_ptq() -> list[str]:
    return [sys.executable, "-m", "fgq_pipeline.cli.ptq"]


def only_failed_runs(store) -> bool:
    client = MlflowClient(f"sqlite:///{store}")
    statuses = [r.info.status for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    return bool(statuses) and set(statuses) == {"FAILED"}


@pytest.mark.parametrize("row", list(CONFIG_ROWS))
def test_bad_config_is_refused_by_validation_naming_the_value(row, files):
    overrides, expected = CONFIG_ROWS[row]
    cfg = compose_config(["debug=smoke", *(o.format(files=files) for o in overrides)])
    with pytest.raises((ValueError, NotADirectoryError)) as error:
        validate_config(cfg)
    assert expected in str(error.value)


@pytest.mark.parametrize("row", list(DATA_ROWS))
def test_bad_data_or_model_ends_with_one_message_and_a_failed_run(row, files, tmp_path, monkeypatch, capsys):
    overrides, expected = DATA_ROWS[row]
    store = tmp_path / "store.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    cfg = compose_config(["debug=smoke", f"data.root={tmp_path / 'data'}", *(o.format(files=files) for o in overrides)])
    fgq_ptq_job = exit_on_user_error("fgq-ptq")(run_job)
    with pytest.raises(SystemExit) as exit_status:
        fgq_ptq_job(cfg, "fgq-ptq", run_ptq, metrics_path=tmp_path / "metrics.json", params_of="ptq")
    assert exit_status.value.code == 2
    (message,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("fgq-ptq: error: ")]
    assert expected in message
    assert not (tmp_path / "metrics.json").exists()
    assert only_failed_runs(store)


@pytest.mark.slow
@pytest.mark.parametrize("row", list(CLI_ROWS))
def test_bad_input_ends_with_one_clear_message_and_nothing_written(row, files, tmp_path):
    overrides, expected = CLI_ROWS[row]
    overrides = [o.format(files=files) for o in overrides]
    store = tmp_path / "store.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}"}
    run_dir = tmp_path / "run"
    result = subprocess.run(fgq_ptq() + ["debug=smoke", f"hydra.run.dir={run_dir}", f"data.root={tmp_path / 'data'}"]
                            + overrides, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "fgq-ptq: error: " in result.stderr
    assert expected in result.stderr, result.stderr[-2000:]
    assert not (run_dir / "metrics.json").exists()
    assert not store.exists() or only_failed_runs(store)


def test_a_group_larger_than_a_layer_is_capped_not_refused():
    from fgq_pipeline.quant import QuantConfig, quantize_model
    from fgq_pipeline.quant.ternary import effective_group_size

    model = quantize_model(DigitsCNN(), QuantConfig(group_size=4096))
    assert effective_group_size(model.features[3].weight.shape, 4096) == model.features[3].weight.shape[1]
