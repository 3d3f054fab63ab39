"""Calibration sees images the way the model was trained: the rules that pick the transform, the
record the pipeline saves with the weights it trains, and the case that made them necessary."""

import json

import numpy as np
import pytest
import torch
from conftest import runs
from PIL import Image

from fgq_pipeline.builders import build_datamodule
from fgq_pipeline.calibration import calibration_transform
from fgq_pipeline.data import DigitsDataModule, prepare_digits
from fgq_pipeline.models import DigitsCNN, load_weights, read_metadata, save_weights
from fgq_pipeline.params import compose_config
from fgq_pipeline.runner import run_job
from fgq_pipeline.tasks.baseline import train_baseline
from fgq_pipeline.tasks.ptq import run_ptq
from fgq_pipeline.training_record import (
    TRAINING_METADATA,
    copied_metadata,
    recorded_training,
    trained_metadata,
)

IMAGE_SIZE = 16
SQUARE_SHADES = (70, 115, 160)  # one class per shade of the grey square


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    prepare_digits(root)
    return root


@pytest.fixture(scope="module")
def weights(tmp_path_factory, digits_root):
    """Digits CNN weights as the pipeline saves them after training with and without augmentation,
    as older versions saved them (no training record), and as a torch state dict from elsewhere."""
    root = tmp_path_factory.mktemp("weights")
    model = DigitsCNN()
    for augment in (True, False):
        record = trained_metadata("digits_cnn", DigitsDataModule(digits_root, augment=augment))
        save_weights(model, root / f"augment_{augment}.safetensors", metadata=record)
    save_weights(model, root / "unrecorded.safetensors", metadata={"model": "digits_cnn"})
    torch.save(model.state_dict(), root / "elsewhere.pth")
    return root


def resolve(digits_root, overrides: list[str]):
    cfg = compose_config(["debug=smoke", f"data.root={digits_root}", *overrides])
    datamodule = build_datamodule(cfg)
    return calibration_transform(cfg, datamodule), datamodule


@pytest.mark.parametrize(("setting", "checkpoint", "data_augment", "augment", "source"), [
    ("auto", "augment_False.safetensors", True, False, "weights"),
    ("auto", "augment_True.safetensors", False, True, "weights"),
    ("auto", "unrecorded.safetensors", False, False, "data.augment"),
    ("auto", "elsewhere.pth", True, True, "data.augment"),
    ("auto", "elsewhere.pth", False, False, "data.augment"),
    (True, "augment_False.safetensors", False, True, "calibration.augment"),
    (False, "augment_True.safetensors", True, False, "calibration.augment"),
])
def test_calibration_follows_the_recorded_training_transform_else_data_augment_unless_set(
        digits_root, weights, setting, checkpoint, data_augment, augment, source):
    chosen, datamodule = resolve(digits_root, [f"model.checkpoint={weights / checkpoint}",
                                               f"data.augment={data_augment}", f"calibration.augment={setting}"])
    assert (chosen.augment, chosen.source) == (augment, source)
    assert chosen.transform == datamodule.describe_transform(augment)
    assert chosen.tags() == {"calibration.augment": str(augment).lower(), "calibration.transform": chosen.transform,
                             "calibration.transform_source": source}
    if source != "calibration.augment":
        assert str(weights / checkpoint) in chosen.reason


def test_torchvision_pretrained_weights_follow_data_augment_without_reading_a_file(digits_root):
    chosen, _ = resolve(digits_root, ["model=torchvision", "model.weights=DEFAULT", "data.augment=false"])
    assert (chosen.augment, chosen.source) == (False, "data.augment")
    assert "torchvision's pretrained weights record no training transform" in chosen.reason


@pytest.mark.parametrize("setting", ["sometimes", "1"])
def test_a_calibration_augment_other_than_auto_true_false_is_refused_naming_it(digits_root, weights, setting):
    recorded = weights / "augment_True.safetensors"
    with pytest.raises(ValueError, match=r"calibration.augment must be auto .*, true or false, got"):
        resolve(digits_root, [f"model.checkpoint={recorded}", f"calibration.augment={setting}"])


def test_a_malformed_training_record_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "odd.safetensors"
    save_weights(DigitsCNN(), path, metadata={TRAINING_METADATA: json.dumps({"augment": "sometimes"})})
    with pytest.raises(ValueError, match=rf"{path} holds a 'training' record"):
        recorded_training(path)


def test_weights_taken_untrained_keep_their_source_record_and_still_load(weights):
    def copied(model_name, source) -> dict:
        return json.loads(copied_metadata(model_name, source)[TRAINING_METADATA])

    recorded = weights / "augment_False.safetensors"
    assert copied("renamed", recorded) == {**recorded_training(recorded), "model": "renamed"}
    assert copied("digits_cnn", weights / "elsewhere.pth") == {"model": "digits_cnn"}
    assert copied("resnet50", None) == {"model": "resnet50"}  # torchvision's weights
    for name in ("augment_False.safetensors", "unrecorded.safetensors", "elsewhere.pth"):
        load_weights(DigitsCNN(), weights / name)  # the record changes nothing about loading


# --- the reported case: a model trained without augmentation, calibrated with the defaults ---


def write_framed_squares(root, per_class: dict[str, int]) -> None:
    """ImageFolder splits of 16x16 images: a white frame around a dark noisy field with a grey square
    in the middle whose shade is the class. Random resized crops zoom past the frame into the
    square, so their statistics are far from those of the whole images the model learned."""
    rng = np.random.default_rng(0)
    for split, count in per_class.items():
        for label, shade in enumerate(SQUARE_SHADES):
            folder = root / split / f"shade{label}"
            folder.mkdir(parents=True)
            for index in range(count):
                image = rng.integers(0, 40, size=(IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.uint8)
                image[:3], image[-3:], image[:, :3], image[:, -3:] = 255, 255, 255, 255
                image[4:12, 4:12] = shade + rng.integers(0, 20)
                Image.fromarray(image).save(folder / f"{index}.png")


@pytest.mark.slow
def test_a_model_trained_without_augmentation_is_calibrated_without_it_by_default(
        tmp_path, monkeypatch, capsys):
    """`fgq-train data.augment=false` on an ImageFolder, then `fgq-ptq` at N=4, A8 with the defaults:
    calibration must see un-augmented images, as with calibration.augment=false, and say so."""
    store = tmp_path / "store.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    write_framed_squares(tmp_path / "images", {"train": 30, "val": 20})
    fp32 = tmp_path / "fp32.safetensors"
    common = ["data=imagefolder", f"data.root={tmp_path / 'images'}", f"data.image_size={IMAGE_SIZE}",
              f"data.resize={IMAGE_SIZE}", "data.num_workers=0", "data.batch_size=8", "data.augment=false",
              "model=cifar_resnet", "model.depth=8", f"model.num_classes={len(SQUARE_SHADES)}",
              "calibration.num_images=60", "quant.group_size=4", "quant.act_bits=8"]
    train = compose_config([*common, "model.checkpoint=null", f"paths.fp32_weights={fp32}", "baseline.epochs=5",
                            "baseline.lr=0.02"])
    run_job(train, "fgq-train", train_baseline, params_of="baseline")
    assert recorded_training(fp32)["augment"] is False
    assert json.loads(read_metadata(fp32)[TRAINING_METADATA])["model"] == "cifar_resnet8"

    def ptq(calibration_augment: str) -> dict:
        cfg = compose_config([*common, f"model.checkpoint={fp32}", f"calibration.augment={calibration_augment}"])
        return run_job(cfg, "fgq-ptq", run_ptq, run_name=lambda _: calibration_augment, params_of="ptq")

    defaults, plain, augmented = ptq("auto"), ptq("false"), ptq("true")
    assert defaults == plain
    assert augmented["top1"] < defaults["top1"]  # the reported loss, which the defaults no longer take
    tags = {r.info.run_name: r.data.tags for r in runs(store, "fgq-imagenet") if r.data.tags["stage"] == "fgq-ptq"}
    assert tags["auto"]["calibration.augment"] == tags["false"]["calibration.augment"] == "false"
    assert tags["auto"]["calibration.transform_source"] == "weights"
    assert tags["true"]["calibration.augment"] == "true"
    assert f"calibration.augment=auto: trained with augment=false, as recorded with {fp32}" in capsys.readouterr().out
