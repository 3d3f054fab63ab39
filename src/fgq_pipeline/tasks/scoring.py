"""The accuracy a quantized model reports, in the arithmetic its exported file runs.

:func:`fgq_pipeline.kernels.torch_twin.exact_model` computes it: the Numba integer path on the CPU,
its torch twin on an accelerator; the verify stage shows the two agree bit for bit. So the integer
path reproduces every reported accuracy, image for image. Only a configuration the integer path
cannot run (float activations, per-filter or per-layer scales, the asymmetric solver) is scored in
the fake-quant model's float arithmetic, and its record says so.
"""

from __future__ import annotations

from torch import nn
from torch.utils.data import DataLoader

from ..kernels.torch_twin import exact_model
from ..modes import eval_mode
from ..train import evaluate


def score(model: nn.Module, loader: DataLoader, num_classes: int, scale_dtype: str) -> dict[str, float | int | str]:
    """:func:`~fgq_pipeline.train.evaluate`'s metrics plus ``arithmetic``: "integer" or "float"; the
    model's group scales are packed as ``scale_dtype`` stores them (its ``quant.scale_dtype``)."""
    with eval_mode(model):
        try:
            scorer, arithmetic = exact_model(model, scale_dtype), "integer"
        except ValueError:  # the integer path cannot run this configuration: float fake-quant it is
            scorer, arithmetic = model, "float"
    return evaluate(scorer, loader, num_classes) | {"arithmetic": arithmetic}
