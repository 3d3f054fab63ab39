"""Activation quantizers, model surgery, repairs and op counts."""

import pytest
import torch
from torch import nn

from fgq_pipeline.modes import eval_mode
from fgq_pipeline.params import compose_config
from fgq_pipeline.quant import (
    ActQuantizer,
    QuantConfig,
    QuantConv2d,
    QuantLinear,
    calibrate_activations,
    count_ops,
    paper_speedup,
    post_training_quantize,
    quantize_model,
    reestimate_batchnorm,
    reset_activation_quantizers,
)
from fgq_pipeline.tasks.ptq_grid import quant_config


def small_net(c_in: int = 4) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(c_in, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 12),
    ).eval()


def batches(c_in: int = 4, n: int = 4):
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(16, c_in, 8, 8, generator=generator), None) for _ in range(n)]


def test_policy_keeps_first_and_last_layer_at_8_bit():
    model = quantize_model(small_net(), QuantConfig(group_size=4))
    kinds = [m.weight_format.kind for m in model.modules() if isinstance(m, (QuantConv2d, QuantLinear))]
    assert kinds == ["int8", "ternary", "int8"]
    model = quantize_model(small_net(), QuantConfig(group_size=4, policy="ternarize_all"))
    kinds = [m.weight_format.kind for m in model.modules() if isinstance(m, (QuantConv2d, QuantLinear))]
    assert kinds == ["ternary", "ternary", "ternary"]


@pytest.mark.parametrize("act_bits,image_bits,expected", [(4, 8, [8, 4, 4]), (4, 2, [4, 4, 4]), (8, 4, [8, 8, 8]),
                                                           (32, 8, [32, 32, 32])])
def test_the_image_keeps_image_bits_when_activations_are_narrower(act_bits, image_bits, expected):
    def input_bits(model):
        return [m.input_quantizer.bits for m in model.modules() if isinstance(m, (QuantConv2d, QuantLinear))]

    config = QuantConfig(act_bits=act_bits, image_bits=image_bits)
    model = quantize_model(small_net(), config)
    assert input_bits(model) == expected
    assert input_bits(reset_activation_quantizers(model, config)) == expected


def test_n1_with_float_activations_reproduces_the_fp32_model():
    model = small_net()
    x = torch.randn(8, 4, 8, 8)
    reference = model(x)
    config = QuantConfig(group_size=1, act_bits=32, policy="ternarize_all", bn_reestimate=False, bias_correction=False)
    quantized = quantize_model(small_net(), config)
    post_training_quantize(quantized, config, batches())
    assert torch.allclose(quantized(x), reference, atol=1e-5)


def test_activation_quantizer_is_unsigned_after_relu_and_signed_otherwise():
    relu_input, signed_input = ActQuantizer(4), ActQuantizer(4)
    for q, data in ((relu_input, torch.rand(100)), (signed_input, torch.randn(100))):
        q.start_calibration()
        q(data)
        q.finish_calibration()
    assert relu_input.integer_range() == (0, 15)
    assert signed_input.integer_range() == (-7, 7)
    x = torch.rand(1000)
    levels = torch.unique(relu_input(x) / relu_input.scale).round()
    assert len(levels) <= 16


@pytest.mark.parametrize("method", ["max", "percentile", "mse"])
def test_calibration_methods_give_a_scale_that_bounds_the_error(method):
    q = ActQuantizer(8, method=method)
    q.start_calibration()
    data = torch.randn(10000)
    q(data)
    q.finish_calibration()
    assert q.calibrated
    err = (q(data) - data).abs()
    assert err[data.abs() < q.scale * 100].max() <= q.scale / 2 + 1e-6


def test_activation_gradient_passes_inside_the_range_and_stops_at_saturation():
    q = ActQuantizer(4)
    q.start_calibration()
    q(torch.linspace(0, 1.5, 100))
    q.finish_calibration()
    top = 15 * q.scale
    x = torch.tensor([0.01, 0.26, 0.5 * float(top), float(top) - 1e-3, float(top) + 0.2, 7.0], requires_grad=True)
    q(x).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]


def test_power_of_two_scale():
    q = ActQuantizer(8, power_of_two=True)
    q.start_calibration()
    q(torch.randn(1000) * 3)
    q.finish_calibration()
    assert float(torch.log2(q.scale)).is_integer()


def test_bn_reestimation_repairs_the_statistics_ternary_weights_produce():
    model = quantize_model(small_net(), QuantConfig(group_size=16))
    data = batches()
    reestimate_batchnorm(model, data)
    bn = model[1]
    with torch.no_grad():
        outputs = torch.cat([model[0](x) for x, _ in data])
    assert torch.allclose(bn.running_mean, outputs.mean(dim=(0, 2, 3)), atol=1e-4)


def test_bias_correction_removes_the_mean_output_shift_of_a_linear_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 8), nn.ReLU(), nn.Linear(8, 4))
    x = torch.rand(512, 32) + 1.0  # large mean input: ternary error shows up as a shift
    reference = model[0](x)
    config = QuantConfig(group_size=32, act_bits=32, policy="ternarize_all", bn_reestimate=False)
    without = quantize_model(nn.Sequential(*[m for m in _copy(model)]), config)
    with_bc = quantize_model(_copy(model), config)
    post_training_quantize(with_bc, config, [(x, None)])
    shift_without = (without[0](x) - reference).mean(0).abs().max()
    shift_with = (with_bc[0](x) - reference).mean(0).abs().max()
    assert shift_with < 1e-4 < shift_without


def _copy(model):
    import copy

    return copy.deepcopy(model)


def test_empty_calibration_set_is_an_error():
    model = quantize_model(small_net(), QuantConfig())
    with pytest.raises(ValueError, match="calibration set is empty"):
        calibrate_activations(model, [])


@pytest.mark.parametrize("field,value", [("act_bits", 1), ("act_bits", 16), ("solver", "sparse"), ("policy", "none"),
                                         ("group_size", 0), ("act_calibration", "median"),
                                         ("image_bits", 1), ("image_bits", 16)])
def test_quant_config_rejects_bad_values_naming_them(field, value):
    with pytest.raises(ValueError, match=repr(value)):
        QuantConfig(**{field: value})


def test_mult_eliminated_is_exactly_75_percent_at_n4_when_channels_divide():
    model = quantize_model(small_net(c_in=4), QuantConfig(group_size=4, policy="ternarize_all"))
    ops = count_ops(model, (4, 8, 8))
    assert ops.mult_eliminated == 0.75
    assert all(layer.multiplications * 4 == layer.macs for layer in ops.layers)


def test_op_counts_per_layer_by_hand():
    model = quantize_model(small_net(c_in=3), QuantConfig(group_size=64))
    layers = {layer.name: layer for layer in count_ops(model, (3, 8, 8)).layers}
    conv2 = layers["3"]
    assert conv2.macs == 32 * 8 * 8 * 16 * 9
    assert conv2.effective_group_size == 16  # N=64 capped at C=16
    assert conv2.multiplications == 32 * 8 * 8 * 9  # one multiply per kernel position
    assert conv2.weight_bits == 2 * 32 * 16 * 9 + 32 * 32 * 9
    assert layers["0"].multiplications == layers["0"].macs  # 8-bit first conv
    assert layers["8"].kind == "int8"


def test_partial_groups_count_one_multiply_each():
    model = quantize_model(small_net(c_in=3), QuantConfig(group_size=2, policy="ternarize_all"))
    first = count_ops(model, (3, 8, 8)).layers[0]
    assert first.multiplications == 16 * 8 * 8 * 9 * 2  # C=3 in groups of 2: sizes 2 and 1


def test_paper_speedup_model_fits_the_paper():
    assert paper_speedup(4) == pytest.approx(9.14, abs=0.01)
    assert paper_speedup(64) == pytest.approx(1024 / 67)  # the paper rounds to 15x
    assert paper_speedup(1) == pytest.approx(4.0)


def linear_with_correlated_inputs():
    torch.manual_seed(0)
    mixing = torch.randn(32, 32)
    inputs = torch.randn(2048, 32) @ mixing  # strongly correlated input channels
    return nn.Sequential(nn.Linear(32, 16)), inputs


@pytest.mark.parametrize("group_size", [4, 8, "filter", "layer"])
def test_gptq_rounding_lowers_output_error_and_stays_ternary_per_group(group_size):
    model, x = linear_with_correlated_inputs()
    reference = model(x).detach()
    errors = {}
    for rounding in ("nearest", "gptq"):
        config = QuantConfig(group_size=group_size, rounding=rounding, act_bits=32, policy="ternarize_all",
                             bias_correction=False, bn_reestimate=False)
        quantized = quantize_model(_copy(model), config)
        post_training_quantize(quantized, config, [(x[:1024], None), (x[1024:], None)])
        errors[rounding] = float((quantized(x) - reference).square().mean())
        layer = quantized[0]
        # The GPTQ weights are ternary per group already: the fake-quant layer reproduces them.
        assert torch.allclose(layer.quantized_weight(), layer.weight, atol=1e-6) or rounding == "nearest"
    assert errors["gptq"] < 0.8 * errors["nearest"]


def test_gptq_on_a_conv_net_keeps_codes_within_groups():
    config = QuantConfig(group_size=4, rounding="gptq", act_bits=32, bias_correction=False, bn_reestimate=False)
    model = quantize_model(small_net(), config)
    post_training_quantize(model, config, batches())
    conv = model[3]
    codes = conv.ternary_weights()
    assert torch.allclose(codes.dequantize(), conv.weight, atol=1e-6)


def test_eval_mode_restores_mixed_module_modes_even_when_the_body_raises():
    model = small_net().train()
    model[1].eval()  # a frozen BatchNorm in a training model
    before = [m.training for m in model.modules()]
    with eval_mode(model, train=[model[4]]):
        assert [m.training for m in model.modules()] == [m is model[4] for m in model.modules()]
    assert [m.training for m in model.modules()] == before
    with pytest.raises(RuntimeError), eval_mode(model):
        raise RuntimeError("the pass failed")
    assert [m.training for m in model.modules()] == before


def test_the_library_default_is_the_pipelines_default_recipe():
    """A library user gets what `conf/quant/fgq.yaml` gives the pipeline (GPTQ-style rounding, MSE
    activation ranges, both repairs), not a weaker recipe."""
    assert quant_config(compose_config()) == QuantConfig()
