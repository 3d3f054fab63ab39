"""Per-tensor activation fake-quantization with a calibrated scale ("dynamic fixed point").

A quantizer observes its input during calibration, then rounds to ``bits``-bit integers times one
shared scale, unsigned when the calibration data never went negative (after ReLU) and signed
otherwise. The gradient passes straight through, so the same module serves fine-tuning.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..checks import is_int

CALIBRATION_METHODS = ("max", "percentile", "mse")
FLOAT_BITS = 32
SAMPLES_PER_BATCH = 65536  # values kept per calibration batch for percentile / MSE search
MSE_CANDIDATES = 100


def validate_act_bits(bits: object) -> int:
    if not is_int(bits) or not (2 <= bits <= 8 or bits == FLOAT_BITS):
        raise ValueError(f"act_bits must be an integer in 2..8, or {FLOAT_BITS} for float activations, got {bits!r}")
    return bits


def validate_calibration(method: object, percentile: object) -> None:
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"act_calibration must be one of {CALIBRATION_METHODS}, got {method!r}")
    if not isinstance(percentile, (int, float)) or not 0 < percentile <= 100:
        raise ValueError(f"act_percentile must be in (0, 100], got {percentile!r}")


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Round to the integer grid and saturate; straight-through gradient inside the range, none for
    saturated values (raising one beyond the range changes nothing the integer path computes)."""
    clipped = torch.clamp(x, qmin * scale, qmax * scale)
    q = torch.clamp(torch.round(x / scale), qmin, qmax) * scale
    return clipped + (q - clipped).detach()


class ActQuantizer(nn.Module):
    """Observe (while ``calibrating``), then fake-quantize a tensor to ``bits`` bits."""

    def __init__(self, bits: int = 8, method: str = "max", percentile: float = 99.99, power_of_two: bool = False):
        super().__init__()
        self.bits = validate_act_bits(bits)
        validate_calibration(method, percentile)
        self.method = method
        self.percentile = float(percentile)
        self.power_of_two = power_of_two
        self.calibrating = False
        self.register_buffer("scale", torch.tensor(0.0))
        self.register_buffer("signed", torch.tensor(False))
        self._samples: list[torch.Tensor] = []
        self._max_abs = 0.0
        self._min = math.inf

    @property
    def enabled(self) -> bool:
        return self.bits != FLOAT_BITS

    @property
    def calibrated(self) -> bool:
        return bool(self.scale > 0)

    def integer_range(self) -> tuple[int, int]:
        if bool(self.signed):
            return -(2 ** (self.bits - 1)) + 1, 2 ** (self.bits - 1) - 1
        return 0, 2**self.bits - 1

    def start_calibration(self) -> None:
        self.calibrating = True
        self._samples, self._max_abs, self._min = [], 0.0, math.inf

    def finish_calibration(self) -> None:
        """Fix signedness and scale from what was observed."""
        self.calibrating = False
        if not self.enabled:
            return
        if self._min == math.inf:
            raise RuntimeError("activation calibration saw no data: the calibration set is empty")
        self.signed.fill_(self._min < 0)
        _, qmax = self.integer_range()
        clip = self._clip_value(qmax)
        scale = max(clip, 1e-8) / qmax
        if self.power_of_two:
            scale = 2.0 ** math.ceil(math.log2(scale))
        self.scale.fill_(scale)
        self._samples = []

    def _clip_value(self, qmax: int) -> float:
        if self.method == "max":
            return self._max_abs
        values = torch.cat(self._samples).abs()
        if self.method == "percentile":
            return float(torch.quantile(values, self.percentile / 100.0))
        return self._mse_clip(values, qmax)

    def _mse_clip(self, values: torch.Tensor, qmax: int) -> float:
        """Clip value minimising the quantization MSE of the observed magnitudes.

        A symmetric signed grid errs on |x| exactly as the unsigned grid does on x, so one search
        over magnitudes serves both.
        """
        candidates = torch.linspace(self._max_abs / MSE_CANDIDATES, self._max_abs, MSE_CANDIDATES)
        errors = []
        for clip in candidates:
            scale = clip / qmax
            q = torch.clamp(torch.round(values / scale), 0, qmax) * scale
            errors.append(float((q - values).square().mean()))
        return float(candidates[int(torch.tensor(errors).argmin())])

    def _observe(self, x: torch.Tensor) -> None:
        detached = x.detach().float()
        self._max_abs = max(self._max_abs, float(detached.abs().max()))
        self._min = min(self._min, float(detached.min()))
        if self.method != "max":
            flat = detached.flatten()
            if flat.numel() > SAMPLES_PER_BATCH:
                generator = torch.Generator().manual_seed(len(self._samples))
                flat = flat[torch.randint(flat.numel(), (SAMPLES_PER_BATCH,), generator=generator)]
            self._samples.append(flat)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        if self.calibrating:
            self._observe(x)
            return x
        if not self.calibrated:  # before calibration (e.g. during BN re-estimation) stay float
            return x
        qmin, qmax = self.integer_range()
        return fake_quantize(x, self.scale, qmin, qmax)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, method={self.method}, power_of_two={self.power_of_two}"
