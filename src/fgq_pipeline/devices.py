"""Where the fake-quant work runs (``device: auto | cpu | cuda | cuda:<index>``).

Calibration, the weight repairs, GPTQ-style rounding and every evaluation follow the model, and the
model goes where ``device`` says: ``auto`` takes CUDA when torch sees it. The Numba integer path
stays on the CPU by design; on an accelerator the torch twin computes the same bits. Lightning's
training hardware is the ``trainer`` group's, set apart because it spans processes and nodes.
"""

from __future__ import annotations

import re

import torch

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def resolve_device(setting: object) -> torch.device:
    """The torch device ``setting`` names; ValueError, naming the value, for a typo or an absent GPU."""
    if not isinstance(setting, str) or not DEVICE_PATTERN.fullmatch(setting):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:<index>, got {setting!r}")
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda":
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= available:
            raise ValueError(f"device={setting!r}, but torch sees {available} CUDA device(s); "
                             "use device=auto (CUDA when present) or device=cpu")
    return device


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of ``model``'s parameters (the CPU for a model without any): where its inputs go."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))
