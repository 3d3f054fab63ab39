"""Digits data, the digits CNN, weight checkpoints and the training/evaluation loop."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from safetensors import safe_open

from fgq_pipeline.data import DigitsDataModule, prepare_digits
from fgq_pipeline.data.npz import load_npz_split, save_npz_split
from fgq_pipeline.models import DigitsCNN, load_weights, save_weights
from fgq_pipeline.train import ClassifierModule, evaluate, fit

DIGITS_TOTAL = 1797
TRAIN_EPOCHS = 15
TRAIN_LR = 0.05


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    prepare_digits(root)
    return root


def trained_batch_norm_model(seed: int = 0) -> DigitsCNN:
    """A model whose running statistics differ from their defaults, so round trips test them."""
    torch.manual_seed(seed)
    model = DigitsCNN()
    model.train()
    model(torch.randn(16, 1, 8, 8))
    return model.eval()


def test_prepare_digits_writes_stratified_uint8_splits(tmp_path):
    stats = prepare_digits(tmp_path / "digits", test_fraction=0.3, seed=0)

    x_train, y_train = load_npz_split(tmp_path / "digits" / "train.npz")
    x_test, y_test = load_npz_split(tmp_path / "digits" / "test.npz")
    assert stats == {"train": len(y_train), "test": len(y_test), "classes": 10}
    assert len(y_train) + len(y_test) == DIGITS_TOTAL
    assert len(y_test) == pytest.approx(0.3 * DIGITS_TOTAL, abs=1)
    assert x_train.dtype == np.uint8 and x_train.shape == (len(y_train), 8, 8, 1)
    assert x_test.dtype == np.uint8 and x_test.shape == (len(y_test), 8, 8, 1)
    assert y_train.dtype == np.int64 and y_test.dtype == np.int64
    assert x_train.max() == 16 and x_train.min() == 0
    train_share = np.bincount(y_train, minlength=10) / len(y_train)
    test_share = np.bincount(y_test, minlength=10) / len(y_test)
    np.testing.assert_allclose(train_share, test_share, atol=0.005)


def test_prepare_digits_rejects_bad_test_fraction(tmp_path):
    with pytest.raises(ValueError, match="test_fraction"):
        prepare_digits(tmp_path, test_fraction=1.0)


def test_setup_on_empty_directory_prepares_and_normalises(tmp_path):
    root = tmp_path / "fresh" / "digits"
    datamodule = DigitsDataModule(root=root, batch_size=64)
    datamodule.setup()

    assert (root / "train.npz").is_file() and (root / "test.npz").is_file()
    assert datamodule.num_classes == 10
    assert datamodule.input_shape == (1, 8, 8)
    assert datamodule.num_train_images == len(load_npz_split(root / "train.npz")[1])
    images, labels = next(iter(datamodule.train_dataloader()))
    assert images.shape == (64, 1, 8, 8) and images.dtype == torch.float32
    assert labels.dtype == torch.int64
    assert images.min() == -1.0 and images.max() <= 1.0
    test_images = torch.cat([batch[0] for batch in datamodule.test_dataloader()])
    val_images = torch.cat([batch[0] for batch in datamodule.val_dataloader()])
    assert len(test_images) == DIGITS_TOTAL - datamodule.num_train_images
    assert torch.equal(test_images, val_images)


def test_subsets_are_fixed_and_validated(digits_root):
    first = DigitsDataModule(root=digits_root, subset_train=100, subset_test=50)
    second = DigitsDataModule(root=digits_root, subset_train=100, subset_test=50)
    first.setup()
    second.setup()

    assert first.num_train_images == 100
    assert sum(len(labels) for _, labels in first.test_dataloader()) == 50
    assert torch.equal(first.train_images, second.train_images)
    assert torch.equal(first.test_labels, second.test_labels)
    with pytest.raises(ValueError, match="subset_train.*0"):
        DigitsDataModule(root=digits_root, subset_train=0)


def test_calibration_loader_draws_seeded_subset_of_training_split(digits_root):
    datamodule = DigitsDataModule(root=digits_root, eval_batch_size=64)

    def draw(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        batches = list(datamodule.calibration_dataloader(200, augment=False, seed=seed))
        return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])

    images, labels = draw(seed=3)
    assert images.shape == (200, 1, 8, 8) and labels.shape == (200,)
    train_rows = {image.numpy().tobytes() for image in datamodule.train_images}
    assert all(image.numpy().tobytes() in train_rows for image in images)
    repeat_images, repeat_labels = draw(seed=3)
    assert torch.equal(images, repeat_images) and torch.equal(labels, repeat_labels)
    assert not torch.equal(images, draw(seed=4)[0])
    with pytest.raises(ValueError, match="num_images"):
        datamodule.calibration_dataloader(0, augment=False, seed=0)
    with pytest.raises(ValueError, match="num_images"):
        datamodule.calibration_dataloader(datamodule.num_train_images + 1, augment=False, seed=0)


def test_holdout_split_is_training_images_that_calibration_with_the_same_seed_never_draws(digits_root):
    datamodule = DigitsDataModule(root=digits_root, eval_batch_size=64)
    total, held = datamodule.num_train_images, 300
    holdout = datamodule.holdout_dataloader(held, seed=3)
    calibration = datamodule.calibration_dataloader(total - held, augment=False, seed=3)
    images = torch.cat([b[0] for b in holdout])
    assert torch.equal(images, datamodule.train_images[holdout.dataset.indices])
    assert len(images) == held
    assert not set(holdout.dataset.indices) & set(calibration.dataset.indices)
    assert holdout.dataset.indices == datamodule.holdout_dataloader(held, seed=3).dataset.indices
    for bad in (0, total):
        with pytest.raises(ValueError, match=f"num_images .*got {bad}"):
            datamodule.holdout_dataloader(bad, seed=0)


def test_held_out_images_leave_training_and_become_the_validation_split(digits_root):
    datamodule = DigitsDataModule(root=digits_root, eval_batch_size=64)
    total, held = datamodule.num_train_images, 300
    assert len(datamodule.train_dataloader().dataset) == total
    assert len(datamodule.val_dataloader().dataset) == datamodule.num_test_images  # the default: the test images
    datamodule.hold_out(held, seed=3)
    expected = datamodule.holdout_dataloader(held, seed=3).dataset.indices
    trained = datamodule.train_dataloader().dataset.indices
    assert len(trained) == total - held and not set(trained) & set(expected)
    validation = datamodule.val_dataloader()
    assert validation.dataset.indices == expected
    assert torch.equal(torch.cat([b[0] for b in validation]), datamodule.train_images[expected])


def test_augmentation_shifts_by_at_most_one_pixel_reproducibly(digits_root):
    datamodule = DigitsDataModule(root=digits_root)
    plain = next(iter(datamodule.calibration_dataloader(128, augment=False, seed=0)))[0]

    pl.seed_everything(0)
    shifted = next(iter(datamodule.calibration_dataloader(128, augment=True, seed=0)))[0]
    pl.seed_everything(0)
    shifted_again = next(iter(datamodule.calibration_dataloader(128, augment=True, seed=0)))[0]

    assert shifted.shape == plain.shape
    assert torch.equal(shifted, shifted_again)
    assert not torch.equal(shifted, plain)
    padded = torch.nn.functional.pad(plain, (1, 1, 1, 1), value=-1.0)
    candidates = torch.stack(
        [padded[:, :, top : top + 8, left : left + 8] for top in range(3) for left in range(3)]
    )
    assert (candidates == shifted).flatten(2).all(dim=2).any(dim=0).all()


def test_load_npz_split_rejects_bad_files(tmp_path):
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 this is not really a zip archive")
    with pytest.raises(ValueError, match="corrupt.npz"):
        load_npz_split(corrupt)

    truncated = tmp_path / "truncated.npz"
    save_npz_split(truncated, np.zeros((4, 8, 8, 1), np.uint8), np.arange(4))
    truncated.write_bytes(truncated.read_bytes()[:-40])
    with pytest.raises(ValueError, match="truncated.npz"):
        load_npz_split(truncated)

    no_labels = tmp_path / "no_labels.npz"
    np.savez(no_labels, x=np.zeros((4, 8, 8, 1), np.uint8))
    with pytest.raises(ValueError, match="no_labels.npz.*'y'"):
        load_npz_split(no_labels)

    flat = tmp_path / "flat.npz"
    np.savez(flat, x=np.zeros((4, 64), np.uint8), y=np.arange(4))
    with pytest.raises(ValueError, match="flat.npz.*shape"):
        load_npz_split(flat)

    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_npz_split(tmp_path / "missing.npz")


def test_safetensors_round_trip_gives_identical_outputs(tmp_path):
    model = trained_batch_norm_model(seed=0)
    path = tmp_path / "weights" / "digits.safetensors"
    save_weights(model, path, metadata={"epochs": "15"})

    restored = load_weights(trained_batch_norm_model(seed=1), path).eval()
    inputs = torch.randn(8, 1, 8, 8)
    assert torch.equal(model(inputs), restored(inputs))
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata() == {"epochs": "15"}
    assert [p.name for p in path.parent.iterdir()] == ["digits.safetensors"]


def test_load_weights_accepts_data_parallel_state_dict_in_pt_file(tmp_path):
    model = trained_batch_norm_model(seed=0)
    path = tmp_path / "reference.pt"
    prefixed = {f"module.{key}": value for key, value in model.state_dict().items()}
    torch.save({"state_dict": prefixed, "epoch": 300}, path)

    restored = load_weights(trained_batch_norm_model(seed=1), path).eval()
    inputs = torch.randn(8, 1, 8, 8)
    assert torch.equal(model(inputs), restored(inputs))


def test_load_weights_names_path_and_keys_on_mismatch(tmp_path):
    narrow = tmp_path / "narrow.safetensors"
    save_weights(DigitsCNN(channels=(16, 32, 32)), narrow)
    with pytest.raises(ValueError, match=r"narrow\.safetensors.*shape mismatch.*features\.0"):
        load_weights(DigitsCNN(), narrow)

    renamed = tmp_path / "renamed.pt"
    state = DigitsCNN().state_dict()
    state["head.weight"] = state.pop("classifier.weight")
    torch.save(state, renamed)
    with pytest.raises(
        ValueError, match=r"renamed\.pt.*missing keys \['classifier\.weight'\].*head\.weight"
    ):
        load_weights(DigitsCNN(), renamed)

    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00" * 32)
    with pytest.raises(ValueError, match=r"corrupt\.safetensors"):
        load_weights(DigitsCNN(), corrupt)
    with pytest.raises(FileNotFoundError, match=r"absent\.pt"):
        load_weights(DigitsCNN(), tmp_path / "absent.pt")


def test_evaluate_restores_training_mode(digits_root):
    datamodule = DigitsDataModule(root=digits_root, subset_test=100)
    model = DigitsCNN().train()

    result = evaluate(model, datamodule.test_dataloader(), num_classes=10)

    assert model.training
    assert result["num_images"] == 100
    assert isinstance(result["top1"], float) and 0.0 <= result["top1"] <= result["top5"] <= 1.0


def train_digits_once(root) -> float:
    pl.seed_everything(0)
    datamodule = DigitsDataModule(root=root, batch_size=64)
    model = DigitsCNN()
    module = ClassifierModule(model, lr=TRAIN_LR, epochs=TRAIN_EPOCHS, optimizer="sgd")
    fit(module, datamodule, epochs=TRAIN_EPOCHS, enable_progress_bar=False)
    return evaluate(model, datamodule.test_dataloader(), datamodule.num_classes)["top1"]


@pytest.mark.slow
def test_training_reaches_95_percent_and_is_reproducible(digits_root):
    first = train_digits_once(digits_root)
    second = train_digits_once(digits_root)

    assert first >= 0.95
    assert first == second
