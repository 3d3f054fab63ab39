"""The uniform 2/3/4-bit baseline: grids per group, through the same rounding and repairs, counted and
scored like every other row."""

import pytest
import torch
from torch import nn

from fgq_pipeline.models import load_weights, save_weights
from fgq_pipeline.quant import (
    QuantConfig,
    count_ops,
    post_training_quantize,
    quantize_model,
)
from fgq_pipeline.quant.ternary import to_groups
from fgq_pipeline.quant.uniform import quantize_uniform
from fgq_pipeline.tasks.scoring import score


def correlated_linear():
    torch.manual_seed(0)
    inputs = torch.randn(2048, 32) @ torch.randn(32, 32)
    return nn.Sequential(nn.Linear(32, 16)), inputs


def _copy(model):
    copied = nn.Sequential(nn.Linear(32, 16))
    copied.load_state_dict(model.state_dict())
    return copied


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("group_size", [4, 16, "filter", "layer"])
def test_every_group_holds_at_most_2_to_the_b_levels(bits, group_size):
    weight = torch.randn(8, 16, 3, 3, generator=torch.Generator().manual_seed(bits))
    groups, _ = to_groups(quantize_uniform(weight, bits, group_size), group_size)
    assert max(len(torch.unique(group)) for group in groups.reshape(-1, groups.shape[-1])) <= 2**bits


def test_more_bits_and_smaller_groups_mean_less_error():
    weight = torch.randn(8, 32, 3, 3, generator=torch.Generator().manual_seed(0))
    error = {(b, n): float((quantize_uniform(weight, b, n) - weight).square().mean()) for b in (2, 3, 4) for n in (4, 32)}
    assert error[4, 4] < error[3, 4] < error[2, 4]
    assert error[2, 4] < error[2, 32]


@pytest.mark.parametrize("value", ["int5", "uniform", 2])
def test_an_unknown_weight_format_is_refused_naming_it(value):
    with pytest.raises(ValueError, match=repr(value)):
        QuantConfig(weight_format=value)


@pytest.mark.parametrize("group_size", [4, "filter", "layer"])
def test_gptq_rounding_lowers_uniform_error_and_the_layer_keeps_its_grids(group_size, tmp_path):
    model, x = correlated_linear()
    reference = model(x).detach()
    errors = {}
    for rounding in ("nearest", "gptq"):
        config = QuantConfig(weight_format="int2", group_size=group_size, rounding=rounding, act_bits=32,
                             policy="ternarize_all", bias_correction=False, bn_reestimate=False)
        quantized = quantize_model(_copy(model), config)
        post_training_quantize(quantized, config, [(x[:1024], None), (x[1024:], None)])
        with torch.no_grad():
            errors[rounding] = float((quantized(x) - reference).square().mean())
    assert errors["gptq"] < 0.8 * errors["nearest"]

    layer = quantized[0]
    with torch.no_grad():
        assert torch.allclose(layer.quantized_weight(), layer.weight, atol=1e-6)  # the weights lie on the fixed grids
    reloaded = quantize_model(_copy(model), config)
    load_weights(reloaded, save_weights(quantized, tmp_path / "int2.safetensors"))
    with torch.no_grad():
        assert torch.equal(reloaded(x), quantized(x))


def test_uniform_rows_count_their_bits_and_are_scored_in_float():
    model, x = correlated_linear()
    config = QuantConfig(weight_format="int3", group_size=4, scale_dtype="fp16", policy="ternarize_all",
                         act_calibration="max")
    quantized = quantize_model(_copy(model), config)
    post_training_quantize(quantized, config, [(x[:256], None)])
    assert count_ops(quantized, (32,)).bits_per_weight == pytest.approx(3 + (16 + 3) / 4)
    loader = [(x[:64], torch.zeros(64, dtype=torch.long))]
    assert score(quantized, loader, 16, config.scale_dtype)["arithmetic"] == "float"
