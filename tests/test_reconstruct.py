"""Block reconstruction (``rounding: reconstruct``): what it learns, that it is exact and reproducible,
and that the integer path runs what it learned."""

import copy
import dataclasses

import numpy as np
import pytest
import torch
import torchvision

from fgq_pipeline.kernels import IntegerNet, export_packed
from fgq_pipeline.kernels.torch_twin import torch_twin
from fgq_pipeline.models import CifarResNet
from fgq_pipeline.params import compose_config
from fgq_pipeline.quant import (
    QuantConfig,
    ReconstructConfig,
    post_training_quantize,
    quant_layers,
    quantize_model,
    reconstruct_blocks,
    reconstruction_blocks,
    ternarize,
)
from fgq_pipeline.quant.uniform import quantize_uniform
from fgq_pipeline.tasks.ptq_grid import finetune_quant_config, reconstruct_config

SIZE = 16
SETTINGS = ReconstructConfig(iterations=60, batch_size=16)


def fp32_resnet() -> torch.nn.Module:
    torch.manual_seed(0)
    return CifarResNet(depth=8).eval()


def calibration(count: int = 4) -> list[tuple[torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 3, SIZE, SIZE, generator=generator),) for _ in range(count)]


def quantized(rounding: str, seed: int = 0, settings: ReconstructConfig = SETTINGS, group_size=4,
              weight_format="ternary") -> torch.nn.Module:
    fp32 = fp32_resnet()
    # image_bits=2: the stem reads 4-bit inputs too, so every block has a quantization error to learn away
    config = QuantConfig(group_size=group_size, rounding=rounding, act_bits=4, image_bits=2,
                         weight_format=weight_format)
    model = quantize_model(copy.deepcopy(fp32), config)
    return post_training_quantize(model, config, calibration(), fp32_model=fp32, reconstruct=settings, seed=seed).eval()


def block_outputs(model: torch.nn.Module, names: list[str], images: torch.Tensor) -> dict[str, torch.Tensor]:
    outputs = {}
    handles = [model.get_submodule(name).register_forward_hook(lambda _m, _a, out, name=name: outputs.update({name: out}))
               for name in names]
    with torch.no_grad():
        model(images)
    for handle in handles:
        handle.remove()
    return outputs


def test_blocks_are_the_residual_blocks_and_the_layers_outside_them():
    resnet8 = quantize_model(fp32_resnet(), QuantConfig())
    assert reconstruction_blocks(resnet8, torch.randn(1, 3, SIZE, SIZE)) == [
        "conv1", "layer1.0", "layer2.0", "layer3.0", "linear"]
    resnet18 = quantize_model(torchvision.models.resnet18(num_classes=10).eval(), QuantConfig())
    assert reconstruction_blocks(resnet18, torch.randn(1, 3, 32, 32)) == [
        "conv1", *(f"layer{stage}.{block}" for stage in range(1, 5) for block in range(2)), "fc"]


@pytest.mark.parametrize("weight_format", ["ternary", "int2"])
def test_reconstruction_lowers_every_block_output_error_below_nearest_rounding(weight_format):
    """Each block's output in the whole quantized network, against the FP32 network's, on calibration
    images; the uniform baseline formats learn through the same reconstruction."""
    fp32 = fp32_resnet()
    nearest, learned = (quantized(rounding, weight_format=weight_format) for rounding in ("nearest", "reconstruct"))
    names = reconstruction_blocks(learned, torch.randn(1, 3, SIZE, SIZE))
    images = torch.cat([batch[0] for batch in calibration()])
    reference, before, after = (block_outputs(m, names, images) for m in (fp32, nearest, learned))
    for name in names:
        error_before = float((before[name] - reference[name]).square().mean())
        error_after = float((after[name] - reference[name]).square().mean())
        assert error_after < error_before, (name, error_after, error_before)


@pytest.mark.parametrize("group_size", [4, "filter"])
def test_learned_weights_are_exactly_their_own_ternarization_with_learned_scales(group_size):
    model, nearest = quantized("reconstruct", group_size=group_size), quantized("nearest", group_size=group_size)
    moved_scales = 0
    for (name, layer), (_, plain) in zip(quant_layers(model), quant_layers(nearest)):
        if layer.weight_format.kind != "ternary":
            continue
        weights = ternarize(layer.weight, group_size)
        assert set(weights.codes.unique().tolist()) <= {-1, 0, 1}
        assert torch.allclose(weights.dequantize(), layer.weight, rtol=1e-6, atol=0), name
        assert torch.equal(ternarize(weights.dequantize(), group_size).codes, weights.codes), name
        moved_scales += int((weights.scales != plain.ternary_weights().scales).sum())
    assert moved_scales > 0


@pytest.mark.parametrize("group_size", [4, "filter"])
def test_uniform_weights_end_on_a_learned_grid_they_sit_on_exactly(group_size):
    """What the packed file and the fake-quant model read: each uniform layer keeps a fixed grid, its
    weights are already on it, and some round to the other level next to their FP32 value."""
    model, fp32 = quantized("reconstruct", group_size=group_size, weight_format="int3"), fp32_resnet()
    rounded_away = 0
    for (name, layer), (_, float_layer) in zip(quant_layers(model), quant_layers(quantize_model(fp32, QuantConfig()))):
        if layer.weight_format.kind != "uniform":
            continue
        grid = layer.uniform_grid
        assert not grid.isnan().any(), name
        assert torch.equal(layer.quantized_weight(), layer.weight), name
        nearest = quantize_uniform(float_layer.weight, 3, group_size, grid=grid)
        rounded_away += int((nearest != layer.weight).sum())
    assert rounded_away > 0


def test_same_seed_same_weights_and_another_seed_other_weights():
    first, again, other = quantized("reconstruct"), quantized("reconstruct"), quantized("reconstruct", seed=1)
    state, repeat, changed = first.state_dict(), again.state_dict(), other.state_dict()
    assert all(torch.equal(state[key], repeat[key]) for key in state)
    assert any(not torch.equal(state[key], changed[key]) for key in state)


def test_steps_and_biases_are_learned_and_the_integer_path_runs_them(tmp_path):
    model, nearest = quantized("reconstruct"), quantized("nearest")
    steps = [float(layer.input_quantizer.scale) for _, layer in quant_layers(model)]
    assert steps != [float(layer.input_quantizer.scale) for _, layer in quant_layers(nearest)]
    assert any(bool((a.bias_correction != b.bias_correction).any())
               for (_, a), (_, b) in zip(quant_layers(model), quant_layers(nearest)))
    images = torch.randn(20, 3, SIZE, SIZE)
    with torch.no_grad():
        twin = torch_twin(model)(images).numpy()
        fake_quant = model(images).numpy()
    integer = IntegerNet.load(export_packed(model, tmp_path / "reconstructed.fgq"))(images.numpy())
    assert np.array_equal(twin, integer)
    assert np.allclose(fake_quant, integer, atol=1e-3 * np.abs(fake_quant).max())


@pytest.mark.parametrize("field, value", [
    ("iterations", 0), ("batch_size", 2.5), ("lr", 0.0), ("scale_lr", -1.0), ("drop_prob", 1.0),
    ("warmup", -0.1), ("beta_end", 40.0), ("round_weight", -0.01), ("bn_reestimate", "yes"), ("views", 0),
])
def test_bad_settings_are_refused_naming_the_value(field, value):
    with pytest.raises(ValueError, match=rf"reconstruct\.{field} .*{value!r}"):
        ReconstructConfig(**{field: value})


class PassCounter:
    """A calibration set that counts the passes made over it."""

    def __init__(self, batches: list) -> None:
        self.batches, self.passes = batches, 0

    def __iter__(self):
        self.passes += 1
        return iter(self.batches)


def test_views_feed_the_blocks_that_many_passes_over_the_calibration_set():
    fp32 = fp32_resnet()
    config = QuantConfig(group_size=4, rounding="nearest", act_bits=4, image_bits=2)
    model = post_training_quantize(quantize_model(copy.deepcopy(fp32), config), config, calibration())
    batches = PassCounter(calibration())
    reconstruct_blocks(model, fp32, batches, dataclasses.replace(SETTINGS, iterations=5, views=3), seed=0)
    assert batches.passes == 3


def test_reconstruction_without_the_fp32_model_and_unknown_roundings_are_refused():
    config = QuantConfig(rounding="reconstruct")
    with pytest.raises(ValueError, match="fp32_model"):
        post_training_quantize(quantize_model(fp32_resnet(), config), config, calibration())
    with pytest.raises(ValueError, match="'reconstruct'.*'adaround'"):
        QuantConfig(rounding="adaround")


def test_the_config_section_is_validated_naming_a_misspelt_setting():
    assert reconstruct_config(compose_config()) == ReconstructConfig()  # the library default is the pipeline's
    with pytest.raises(ValueError, match=r"\['iteration'\]"):
        reconstruct_config(compose_config(["+reconstruct.iteration=5"]))
    with pytest.raises(ValueError, match=r"reconstruct\.lr .*-0\.5"):
        reconstruct_config(compose_config(["reconstruct.lr=-0.5"]))


def test_fine_tuning_starts_from_the_post_training_rounding_it_names():
    cfg = compose_config(["finetune.rounding=reconstruct", "quant.rounding=gptq"])
    quant = finetune_quant_config(cfg)
    assert (quant.rounding, quant.group_size, quant.act_bits) == ("reconstruct", cfg.finetune.group_size,
                                                                   cfg.finetune.act_bits)
    with pytest.raises(ValueError, match="'adaround'"):
        finetune_quant_config(compose_config(["finetune.rounding=adaround"]))
