"""One result row: what was run (config, model, data) next to what it measured."""

from __future__ import annotations

from omegaconf import DictConfig

from ..quant import QuantConfig, count_ops


def result_record(cfg: DictConfig, quant: QuantConfig, model, datamodule, metrics: dict, fp32_top1: float,
                  finetuned: bool = False) -> dict:
    ops = count_ops(model, datamodule.input_shape)
    return {
        "model": cfg.model.name,
        "dataset": cfg.data.name,
        **quant.to_dict(),
        "finetuned": finetuned,
        "top1": metrics["top1"],
        "top5": metrics["top5"],
        "arithmetic": metrics["arithmetic"],
        "fp32_top1": fp32_top1,
        "num_images": metrics["num_images"],
        "mult_eliminated": ops.mult_eliminated,
        "bits_per_weight": ops.bits_per_weight,
        "potential_speedup": ops.potential_speedup,
    }


def run_name(quant: QuantConfig) -> str:
    """A short name for a configuration, e.g. ``N=4 A8 exact/gptq bn+bc`` (``N=4 A8 int3 fp16 ...`` for
    uniform weights and scales stored narrower than fp32, ``N=4 A4 image8 ...`` where the image keeps more
    bits than the activations)."""
    repairs = "+".join(name for name, on in (("bn", quant.bn_reestimate), ("bc", quant.bias_correction)) if on)
    weights = "" if quant.weight_format == "ternary" else f" {quant.weight_format}"
    scales = "" if quant.scale_dtype == "fp32" else f" {quant.scale_dtype}"
    image = "" if quant.image_input_bits == quant.act_bits else f" image{quant.image_input_bits}"
    return (f"N={quant.group_size} A{quant.act_bits}{image}{weights}{scales} {quant.solver}/{quant.rounding}"
            + (f" {repairs}" if repairs else ""))
