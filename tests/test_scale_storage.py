"""Group scales as stored (fp32, fp16, int8 per filter), in the fake-quant model and in the bit counts."""

import numpy as np
import pytest
import torch
from torch import nn

from fgq_pipeline.kernels import bits_per_weight
from fgq_pipeline.kernels.export import pack_model
from fgq_pipeline.quant import (
    QuantConfig,
    count_ops,
    post_training_quantize,
    quantize_model,
)
from fgq_pipeline.quant.scale_storage import INT8_SCALE_MAX, stored_scales


def scales() -> torch.Tensor:
    """[K=3, G=2, 3, 3] scales whose filters differ by orders of magnitude, as folded BatchNorm makes them."""
    generator = torch.Generator().manual_seed(0)
    return torch.rand(3, 2, 3, 3, generator=generator) * torch.tensor([1e-3, 1.0, 50.0]).view(3, 1, 1, 1)


def test_fp32_scales_are_kept_and_fp16_scales_read_back_as_fp16_values():
    s = scales()
    assert stored_scales(s, "fp32") is s
    assert torch.equal(stored_scales(s, "fp16"), s.half().float())


def test_int8_scales_are_multiples_of_one_step_per_filter():
    s = scales()
    stored = stored_scales(s, "int8")
    for k in range(s.shape[0]):
        step = s[k].abs().max() / INT8_SCALE_MAX
        multiples = stored[k] / step
        assert torch.allclose(multiples, multiples.round(), atol=1e-4)
        assert multiples.abs().max().round() == INT8_SCALE_MAX
        assert (stored[k] - s[k]).abs().max() <= step / 2 * (1 + 1e-5)  # one grid per filter, even the smallest


def test_a_zero_filter_stays_zero_and_a_bad_dtype_is_refused():
    s = scales()
    s[1] = 0
    assert torch.equal(stored_scales(s, "int8")[1], torch.zeros_like(s[1]))
    with pytest.raises(ValueError, match="got 'bf16'"):
        stored_scales(s, "bf16")
    with pytest.raises(ValueError, match="got 'fp8'"):
        QuantConfig(scale_dtype="fp8")


def small_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval()


@pytest.mark.parametrize("scale_dtype", ["fp32", "fp16", "int8"])
def test_the_fake_quant_model_uses_the_stored_scales_and_counts_the_packed_bits(scale_dtype):
    config = QuantConfig(group_size=4, scale_dtype=scale_dtype, act_calibration="max")
    model = quantize_model(small_cnn(), config)
    post_training_quantize(model, config, [(torch.randn(16, 3, 8, 8),) for _ in range(2)])
    layer = model[3]
    ternary = layer.ternary_weights()
    assert torch.equal(ternary.scales, stored_scales(ternary.scales, scale_dtype))
    assert torch.equal(layer.quantized_weight(), ternary.dequantize())
    packed = pack_model(model, scale_dtype)
    counted = count_ops(model, (3, 8, 8)).bits_per_weight
    assert counted == pytest.approx(bits_per_weight(list(packed.layers.values())), rel=1e-12)


def test_narrower_scales_add_weight_error_in_the_fake_quant_model():
    weight = torch.randn(8, 16, 3, 3, generator=torch.Generator().manual_seed(2))
    errors = {}
    for scale_dtype in ("fp32", "fp16", "int8"):
        config = QuantConfig(group_size=4, scale_dtype=scale_dtype, policy="ternarize_all", act_bits=32)
        conv = quantize_model(nn.Sequential(nn.Conv2d(16, 8, 3, bias=False)), config)[0]
        with torch.no_grad():
            conv.weight.copy_(weight)
        with torch.no_grad():
            errors[scale_dtype] = float((conv.quantized_weight() - weight).square().sum())
    assert errors["fp32"] <= errors["fp16"] < errors["int8"]
    assert np.isclose(errors["fp16"], errors["fp32"], rtol=1e-3)
