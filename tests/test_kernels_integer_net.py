"""Whole-network integer inference against the fake-quant torch model it was exported from.

Both paths round every layer input to integers the same way (round(x / s) in fp32, saturate). The
integer path then sums each group exactly while fake quant sums dequantized products in fp32, and
BatchNorm is folded into the scales and bias instead of applied after the conv, so layer outputs
differ by fp32 rounding (about 1e-7 relative). Two consequences:

* Where every layer received the same integers, logits differ by fp32 rounding only: observed
  below 2e-7 of the largest logit; TOLERANCE (1e-4) leaves a wide margin.
* When a layer's float input lands within that rounding of a .5 boundary, the two paths round it
  one step apart (a requantization flip: a few in 10^6 activations of the first ternary layer of
  the real ResNet-20). A flip perturbs the next layers by about one step, so it seeds more flips
  downstream in the same image. Such images are held to FLIP_TOLERANCE (5e-2 of the largest
  logit; observed up to 1.2e-2 over the real ResNet-20's full test set, where 2,834 of 10,000
  images have at least one flip with the tiled kernels, 2,868 with the general ones) and keep their top-1 prediction, except a near-tie between the
  two top classes: 3 of 10,000 test images. An image without a flip never changes its prediction.
"""

import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import CIFAR10, RESNET20, needs_shared

from fgq_pipeline.kernels import IntegerNet, bits_per_weight, export_packed, load_packed
from fgq_pipeline.kernels.simd import FAST_DOT4
from fgq_pipeline.models import CifarResNet, DigitsCNN, load_weights
from fgq_pipeline.quant import (
    QuantConfig,
    post_training_quantize,
    quant_layers,
    quantize_model,
)

TOLERANCE = 1e-4
FLIP_TOLERANCE = 5e-2
FULL_TEST_SET_AGREEMENT = 0.999  # see the full-test-set test: flips move a few near-ties


class RecordingNet(IntegerNet):
    """Keeps the integers each layer received, to compare with the fake-quant model's."""

    node_by_node = True  # every layer's float input goes through run_layer

    def run_layer(self, layer, x, *epilogue):
        self.inputs[layer.name] = layer.activation.quantize(x).astype(np.int16)  # 8-bit codes: int16 holds differences
        return super().run_layer(layer, x, *epilogue)


def fake_quant_inputs(model: torch.nn.Module) -> dict:
    """Hooks that record the integers each fake-quant layer rounds its input to (NHWC, like the integer net)."""
    inputs = {}

    def record(name, layer, args):
        quantizer = layer.input_quantizer
        integers = torch.clamp(torch.round(args[0] / quantizer.scale), *quantizer.integer_range()).short()
        inputs[name] = (integers.permute(0, 2, 3, 1) if integers.dim() == 4 else integers).numpy()

    for name, layer in quant_layers(model):
        layer.register_forward_pre_hook(partial(record, name))
    return inputs


def compare(model: torch.nn.Module, images: torch.Tensor, path: Path) -> dict:
    """Export ``model``, run both paths on ``images`` and summarise how far they differ."""
    return compare_batches(model, [images], path)


def compare_batches(model: torch.nn.Module, batches, path: Path) -> dict:
    """As :func:`compare`, over batches of images (the recorded layer inputs of a whole test set
    would not fit in memory), merged into one summary."""
    export_packed(model, path)
    expected_inputs = fake_quant_inputs(model)
    net = RecordingNet.load(path)
    summaries = []
    for images in batches:
        net.inputs = {}
        with torch.no_grad():
            expected = model.eval()(images).numpy()
        logits = net(images.numpy())
        summaries.append(_batch_summary(logits, expected, net.inputs, expected_inputs))
    return {key: (max if key.startswith(("max", "largest")) else sum)(s[key] for s in summaries)
            for key in summaries[0]}


def _batch_summary(logits: np.ndarray, expected: np.ndarray, inputs: dict, expected_inputs: dict) -> dict:
    images = len(logits)
    steps = [np.abs(inputs[name] - expected_inputs[name]).reshape(images, -1) for name in expected_inputs]
    moved = [step != 0 for step in steps]
    flipped = np.any([m.any(axis=1) for m in moved], axis=0)
    relative = np.abs(logits - expected).max(axis=1) / np.abs(expected).max()
    return {
        "images": images,
        "top1_agree": int((logits.argmax(1) == expected.argmax(1)).sum()),
        "top1_differ_without_flips": int(((logits.argmax(1) != expected.argmax(1)) & ~flipped).sum()),
        "max_abs_logit_diff": float(np.abs(logits - expected).max()),
        "max_relative_unflipped": float(relative[~flipped].max(initial=0.0)),
        "max_relative_flipped": float(relative[flipped].max(initial=0.0)),
        "images_with_flips": int(flipped.sum()),
        "flipped_activations": int(sum(np.count_nonzero(m) for m in moved)),
        "activations": int(sum(step.size for step in steps)),
        "largest_flip_steps": int(max(step.max() for step in steps)),
    }


def assert_agrees(result: dict, min_top1_agreement: float = 1.0) -> None:
    print(result)
    assert result["top1_differ_without_flips"] == 0
    assert result["top1_agree"] >= min_top1_agreement * result["images"]
    assert result["max_relative_unflipped"] <= TOLERANCE
    assert result["max_relative_flipped"] <= FLIP_TOLERANCE
    assert result["flipped_activations"] <= 0.01 * result["activations"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """DigitsCNN after one quick epoch on the digits training split, and the split's images."""
    from fgq_pipeline.data import DigitsDataModule

    data = DigitsDataModule(tmp_path_factory.mktemp("digits"), augment=False)
    data.setup()
    torch.manual_seed(0)
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for start in range(0, len(data.train_images), 64):
        loss = F.cross_entropy(model(data.train_images[start:start + 64]), data.train_labels[start:start + 64])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.state_dict(), data


def quantized_digits(digits, config: QuantConfig) -> torch.nn.Module:
    state, data = digits
    model = DigitsCNN()
    model.load_state_dict(state)
    quantize_model(model, config)
    calibration = [(data.train_images[i:i + 64], None) for i in range(0, 256, 64)]
    return post_training_quantize(model, config, calibration)


@pytest.mark.parametrize("group_size, act_bits", [(4, 8), (64, 8), (3, 4)])
def test_digits_cnn_integer_net_matches_fake_quant(digits, tmp_path, group_size, act_bits):
    model = quantized_digits(digits, QuantConfig(group_size=group_size, act_bits=act_bits))
    result = compare(model, digits[1].test_images[:300], tmp_path / "digits.safetensors")
    assert_agrees(result)


def test_batch_one_on_the_2_bit_gemv_kernel_gives_the_large_batch_logits(digits, tmp_path):
    """One image at a time, the linear layers read their 2-bit codes (GEMV kernel); twenty at a time,
    their int8-decoded weights (batched kernel)."""
    model = quantized_digits(digits, QuantConfig(group_size=64, act_bits=8))
    net = IntegerNet.load(export_packed(model, tmp_path / "digits.safetensors"))
    if FAST_DOT4:  # elsewhere every layer takes the general kernels, whose row and batched paths this compares
        assert any(tiled.gemv is not None for tiled in net._tiled.values()), "no ternary layer took the tiled kernels"
    images = digits[1].test_images[:20].numpy()
    one_at_a_time = np.concatenate([net(images[i:i + 1]) for i in range(len(images))])
    whole_batch = net(images)
    np.testing.assert_allclose(one_at_a_time, whole_batch, rtol=0, atol=TOLERANCE * np.abs(whole_batch).max())


def test_digits_cnn_packed_size_and_reduced_precision_scales(digits, tmp_path):
    model = quantized_digits(digits, QuantConfig(group_size=4, act_bits=8)).eval()
    images = digits[1].test_images[:300]
    with torch.no_grad():
        expected = model(images).numpy().argmax(1)
    sizes, agreement = {}, {}
    for scale_dtype in ("fp32", "fp16", "int8"):
        path = export_packed(model, tmp_path / f"{scale_dtype}.safetensors", scale_dtype=scale_dtype)
        sizes[scale_dtype] = bits_per_weight(list(load_packed(path).layers.values()))
        agreement[scale_dtype] = float((IntegerNet.load(path)(images.numpy()).argmax(1) == expected).mean())
    print("bits per weight", sizes, "top-1 agreement with fake quant", agreement)
    assert sizes["fp32"] > sizes["fp16"] > sizes["int8"] > 2
    assert agreement["fp32"] == 1.0 and agreement["fp16"] >= 0.99 and agreement["int8"] >= 0.95


@pytest.mark.parametrize("size", [8, 32])
def test_cifar_resnet_integer_net_matches_fake_quant(tmp_path, size):
    torch.manual_seed(size)
    model = CifarResNet(depth=8)
    config = QuantConfig(group_size=4, act_bits=8)
    quantize_model(model, config)
    post_training_quantize(model, config, [(torch.randn(32, 3, size, size), None) for _ in range(4)])
    assert_agrees(compare(model, torch.randn(64, 3, size, size), tmp_path / "resnet.safetensors"))


@pytest.mark.slow
@needs_shared
def test_pretrained_resnet20_integer_net_agrees_on_the_full_test_set(tmp_path):
    """All 10,000 CIFAR-10 test images through the integer path and the fake-quant model.

    Measured: 9,997 of 10,000 top-1 predictions agree. The three that differ are images whose
    requantization flips (an activation within fp32 rounding of a .5 boundary, rounded one step
    apart by the two paths, then cascading: up to 5 steps apart further down) moved a near-tie
    between the top two classes; no image without a flip differs. So the bound here is 99.9% with
    zero unexplained differences, not 100%.
    """
    from fgq_pipeline.data import Cifar10DataModule

    torch.manual_seed(0)  # the calibration crops and flips draw from torch's global generator
    data = Cifar10DataModule(CIFAR10, subset_train=256)
    model = load_weights(CifarResNet(20), RESNET20)
    config = QuantConfig(group_size=4, act_bits=8)
    quantize_model(model, config)
    post_training_quantize(model, config, list(data.calibration_dataloader(256, augment=True, seed=0)))
    batches = (images for images, _ in data.test_dataloader())
    result = compare_batches(model, batches, tmp_path / "resnet20.safetensors")
    assert result["images"] == 10_000
    assert_agrees(result, min_top1_agreement=FULL_TEST_SET_AGREEMENT)


def test_export_refuses_an_uncalibrated_model(tmp_path):
    model = quantize_model(DigitsCNN(), QuantConfig(group_size=4))
    with pytest.raises(ValueError, match="features.0.*no calibrated integer input"):
        export_packed(model, tmp_path / "x.safetensors")


def test_the_integer_path_imports_no_training_stack():
    code = ("import sys, fgq_pipeline.kernels; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'lightning', 'pytorch_lightning', 'mlflow', "
            "'hydra', 'dvc', 'omegaconf'}))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"
