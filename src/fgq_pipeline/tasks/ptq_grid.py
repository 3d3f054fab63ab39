"""The PTQ configurations a config asks for: ``cfg.quant`` alone, or the ``cfg.ptq`` grid.

Imports no torch model code beyond the method's config, so validation can expand the grid cheaply.
"""

from __future__ import annotations

import itertools

from omegaconf import DictConfig, OmegaConf

from ..quant.config import QuantConfig, ReconstructConfig


def quant_config(cfg: DictConfig, **overrides) -> QuantConfig:
    """``cfg.quant`` as a validated QuantConfig, with some fields replaced (``_target_`` is not read)."""
    fields = {k: cfg.quant[k] for k in cfg.quant if k != "_target_"}
    return QuantConfig(**{**fields, **overrides})


def ptq_grid(cfg: DictConfig) -> list[QuantConfig]:
    """Every ``ptq`` variant at each of its group sizes x act_bits, then ``quant``; no repeats.

    act_bits varies fastest, so configs sharing weight-side repairs come one after another.
    """
    configs = []
    for variant in OmegaConf.to_container(cfg.ptq.variants, resolve=True):
        group_sizes = variant.pop("group_size", list(cfg.ptq.group_size))
        act_bits = variant.pop("act_bits", list(cfg.ptq.act_bits))
        for group_size, bits in itertools.product(group_sizes, act_bits):
            configs.append(quant_config(cfg, **variant, group_size=group_size, act_bits=bits))
    configs.append(quant_config(cfg))
    return list(dict.fromkeys(configs))


def finetune_quant_config(cfg: DictConfig) -> QuantConfig:
    """The configuration fine-tuning trains at: ``cfg.quant`` at the ``finetune`` group size and bits,
    started from the ``finetune.rounding`` of that configuration."""
    return quant_config(cfg, group_size=cfg.finetune.group_size, act_bits=cfg.finetune.act_bits,
                        rounding=cfg.finetune.rounding)


def reconstruct_config(cfg: DictConfig) -> ReconstructConfig:
    """``cfg.reconstruct``, the settings of ``rounding: reconstruct``, validated."""
    settings = OmegaConf.to_container(cfg.reconstruct, resolve=True)
    unknown = sorted(set(settings) - set(ReconstructConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(f"reconstruct has no setting {unknown}; settings are {sorted(ReconstructConfig.__dataclass_fields__)}")
    return ReconstructConfig(**settings)
