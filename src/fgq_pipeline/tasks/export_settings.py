"""What an export asks for (which models, which scale precisions) and what the packed format can hold.

Imports no model or kernel code beyond the names it checks against, so validation can run it
before anything is built, and a refusal never waits for a calibration pass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from ..kernels.scales import SCALE_DTYPES
from ..quant.activation import FLOAT_BITS
from ..quant.ternary import NAMED_GROUPS

if TYPE_CHECKING:
    from ..quant import QuantConfig

SOURCES = ("ptq", "finetuned")  # the ptq stage's headline model, the fine-tuned one
SCALE_DTYPE_NAMES = tuple(SCALE_DTYPES)


def check_export_settings(export: DictConfig) -> None:
    """The stage's ``models`` x ``scale_dtypes`` and the app's ``source`` / ``scale_dtype`` / ``weights``."""
    _one_of("export.source", export.source, SOURCES)
    _one_of("export.scale_dtype", export.scale_dtype, SCALE_DTYPE_NAMES)
    _list_of("export.models", export.models, SOURCES)
    _list_of("export.scale_dtypes", export.scale_dtypes, SCALE_DTYPE_NAMES)
    if export.weights is not None and not isinstance(export.weights, str):
        raise ValueError(f"export.weights must be the path of a weights file, or null, got {_plain(export.weights)!r}")


def check_exportable(quant: QuantConfig, source: str) -> None:
    """The packed format's limits, for the config ``source`` is quantized at (``quant.*`` for ptq,
    ``finetune.group_size`` / ``act_bits`` for finetuned): the kernels would refuse the same model,
    but only after it was built and calibrated."""
    prefix = "quant" if source == "ptq" else "finetune"
    if quant.weight_format != "ternary":
        raise ValueError(f"quant.weight_format={quant.weight_format!r} cannot be packed: the packed format and its "
                         "kernels hold ternary groups; the uniform formats are accuracy baselines")
    if quant.group_size in NAMED_GROUPS:
        raise ValueError(f"{prefix}.group_size={quant.group_size!r} cannot be packed: the packed format holds "
                         f"groups of N input channels, N an integer; export the {source} model at an integer N")
    if quant.solver == "asymmetric":
        raise ValueError("quant.solver='asymmetric' cannot be packed: it keeps two scales per group and the packed "
                         "format holds one; export a model quantized with solver exact or twn")
    if quant.act_bits == FLOAT_BITS:
        raise ValueError(f"{prefix}.act_bits={FLOAT_BITS} cannot be packed: the integer path needs integer "
                         f"activations; export the {source} model at act_bits 2..8")


def _one_of(key: str, value: object, allowed: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{key} must be one of {allowed}, got {_plain(value)!r}")


def _list_of(key: str, values: object, allowed: tuple[str, ...]) -> None:
    values = _plain(values)
    if (not isinstance(values, list) or not values or len(set(map(str, values))) != len(values)
            or any(not isinstance(v, str) or v not in allowed for v in values)):
        raise ValueError(f"{key} must be a non-empty list of distinct values from {allowed}, got {values!r}")


def _plain(value: object) -> object:
    """A config list as a plain list, so the message shows ``['fp64']`` rather than a ListConfig."""
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
