"""The torch twin computes what the Numba integer path computes, bit for bit, and scoring uses it."""

import numpy as np
import pytest
import torch
from test_kernels_export import ARCHITECTURES, quantized

from fgq_pipeline.kernels import IntegerNet, export_packed
from fgq_pipeline.kernels.torch_twin import exact_model, torch_twin
from fgq_pipeline.models import CifarResNet, DigitsCNN
from fgq_pipeline.quant import QuantConfig, post_training_quantize, quantize_model
from fgq_pipeline.tasks.scoring import score

IMAGES = 70  # a batched block of 64 rows and a remainder on the row path, for the dense layers too
# The twin runs N=4 as one fp32 pass per group (about 40x the integer path's time on the CPU), so the
# suite covers a cross-section: the pipeline's nets, functional ops, a torchvision ResNet of each block kind.
TWIN_ARCHITECTURES = [p for p in ARCHITECTURES if p.id in {"digits_cnn", "cifar_resnet8", "functional", "resnet18",
                                                             "resnet50"}]


@pytest.mark.parametrize("build, size, channels, free_running", TWIN_ARCHITECTURES)
def test_twin_and_integer_net_give_identical_logits(tmp_path, build, size, channels, free_running):
    """fp32, fp16 and int8 scales (int8 multiples of each filter's fp32 scale-of-scales): the same
    float32 logits, not close ones (the random-weight ResNet-50 included, whose float fake-quant model
    drifts away from both). One and two images too: layers with fewer than 3 output positions (the
    torchvision ResNets' last stage at 32x32) then run the tiled GEMV, which reads int8 scales as stored."""
    model = quantized(build, size, channels)
    images = torch.randn(IMAGES, channels, size, size)
    for scale_dtype in ("fp32", "fp16", "int8"):
        net = IntegerNet.load(export_packed(model, tmp_path / f"{scale_dtype}.fgq", scale_dtype=scale_dtype))
        with torch.no_grad():
            twin = torch_twin(model, scale_dtype)(images).numpy()
        for batch in (IMAGES, 2, 1):
            integer = net(images[:batch].numpy())
            assert twin.dtype == integer.dtype == np.float32
            assert np.array_equal(twin[:batch], integer), (scale_dtype, batch,
                                                           float(np.abs(twin[:batch] - integer).max()))


def test_twin_layer_helpers_follow_the_packed_order_for_odd_shapes(tmp_path):
    """Channels that N does not divide, a strided dilated conv and an uneven adaptive pool."""

    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = torch.nn.Conv2d(3, 6, 3, padding=2, dilation=2)
            self.conv2 = torch.nn.Conv2d(6, 10, 3, stride=2, padding=1)
            self.pool = torch.nn.AdaptiveAvgPool2d((2, 3))
            self.fc = torch.nn.Linear(60, 5)

        def forward(self, x):
            x = torch.relu(self.conv1(x))
            x = torch.nn.functional.avg_pool2d(torch.relu(self.conv2(x)), 3, stride=1, padding=1,
                                               count_include_pad=False)
            return self.fc(torch.flatten(self.pool(x), 1))

    config = QuantConfig(group_size=4, act_bits=8, policy="ternarize_all")
    torch.manual_seed(0)
    model = post_training_quantize(quantize_model(Odd().eval(), config), config,
                                   [(torch.randn(8, 3, 11, 13), None)]).eval()
    images = torch.randn(IMAGES, 3, 11, 13)
    with torch.no_grad():
        twin = torch_twin(model)(images).numpy()
    assert np.array_equal(twin, IntegerNet.load(export_packed(model, tmp_path / "odd.fgq"))(images.numpy()))


def test_score_reports_integer_arithmetic_where_the_integer_path_runs_the_model():
    torch.manual_seed(0)
    images, labels = torch.randn(40, 3, 16, 16), torch.randint(0, 10, (40,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=16)
    calibration = [(images[:16], None)]
    results = {}
    for act_bits in (8, 32):
        config = QuantConfig(group_size=4, act_bits=act_bits)
        model = post_training_quantize(quantize_model(CifarResNet(depth=8).eval(), config), config, calibration)
        results[act_bits] = score(model, loader, 10, "fp32")
        if act_bits == 8:
            with torch.no_grad():
                expected = exact_model(model)(images).argmax(1)
            assert results[8]["top1"] == pytest.approx(float((expected == labels).float().mean()))
    assert results[8]["arithmetic"] == "integer" and results[32]["arithmetic"] == "float"


def test_exact_model_on_the_cpu_is_the_integer_path():
    config = QuantConfig(group_size=4, act_bits=8)
    model = post_training_quantize(quantize_model(DigitsCNN().eval(), config), config,
                                   [(torch.randn(16, 1, 8, 8), None)])
    assert isinstance(exact_model(model).net, IntegerNet)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["alexnet", "resnet50"])
def test_imagenet_scale_networks_at_224_are_bit_identical(tmp_path, arch):
    """The paper's networks at their own input size (random weights, calibrated on generated images: no
    pretrained weights are reachable offline): twin and integer path give the same logits."""
    import torchvision

    torch.manual_seed(0)
    config = QuantConfig(group_size=4, act_bits=8)
    model = quantize_model(torchvision.models.get_model(arch, weights=None).eval(), config)
    model = post_training_quantize(model, config, [(torch.randn(4, 3, 224, 224), None) for _ in range(2)]).eval()
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        twin = torch_twin(model)(images).numpy()
    assert np.array_equal(twin, IntegerNet.load(export_packed(model, tmp_path / f"{arch}.fgq"))(images.numpy()))
