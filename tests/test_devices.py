"""The device setting's plumbing, checked on the CPU: what ``device`` resolves to, that the model goes
there, that calibration inputs follow the model, and that the twin's group sums stay full fp32."""

import pytest
import torch
from torch import nn

from fgq_pipeline import builders
from fgq_pipeline.devices import resolve_device
from fgq_pipeline.kernels.torch_twin import ieee_float32
from fgq_pipeline.params import compose_config
from fgq_pipeline.quant.batches import batch_images


def test_auto_takes_cuda_only_when_torch_sees_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


@pytest.mark.parametrize("setting", ["cuda", "cuda:1"])
def test_a_gpu_that_is_not_there_is_refused_naming_the_setting(setting, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: setting == "cuda:1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=f"device='{setting}', but torch sees {int(setting == 'cuda:1')} CUDA"):
        resolve_device(setting)


@pytest.mark.parametrize("setting", ["gpu", "CUDA", "cuda:x", 0, None])
def test_an_unknown_device_is_refused_naming_it(setting):
    with pytest.raises(ValueError, match=f"got {setting!r}"):
        resolve_device(setting)


def test_the_fp32_model_is_built_on_the_configured_device(monkeypatch):
    """On a CPU-only machine the meta device stands in for an accelerator: build_model must put the
    model where resolve_device says, whatever that is."""
    cfg = compose_config(["debug=smoke", "device=cpu"])
    monkeypatch.setattr(builders, "resolve_device", lambda setting: torch.device("meta"))
    model = builders.build_model(cfg, load_checkpoint=False)
    assert {p.device.type for p in model.parameters()} == {"meta"}


def test_calibration_inputs_follow_the_model():
    model = nn.Linear(3, 2, device="meta")
    batches = [(torch.zeros(4, 3), torch.zeros(4)), torch.ones(2, 3)]
    assert [x.device.type for x in batch_images(batches, model)] == ["meta", "meta"]


def test_the_twin_runs_its_group_sums_in_full_fp32_and_restores_the_settings():
    settings = (torch.backends.cuda.matmul, torch.backends.cudnn.conv)
    before = [s.fp32_precision for s in settings]
    torch.backends.cudnn.conv.fp32_precision = "tf32"
    try:
        with ieee_float32():
            assert [s.fp32_precision for s in settings] == ["ieee", "ieee"]
        assert torch.backends.cudnn.conv.fp32_precision == "tf32"
    finally:
        for setting, precision in zip(settings, before):
            setting.fp32_precision = precision
