"""The FGQ method as pure tensor code: ternary groups, activation quantizers, surgery, repairs, op counts."""

from .activation import ActQuantizer
from .config import QuantConfig, ReconstructConfig
from .gptq import gptq_ternarize
from .modules import QuantConv2d, QuantLinear, WeightFormat
from .opcount import NetworkOps, count_ops, paper_speedup
from .reconstruct import reconstruct_blocks, reconstruction_blocks
from .repair import (
    calibrate_activations,
    correct_bias,
    post_training_quantize,
    reestimate_batchnorm,
    repair_weights,
)
from .surgery import quant_layers, quantize_model, reset_activation_quantizers
from .ternary import TernaryWeights, ternarize

__all__ = [
    "ActQuantizer", "NetworkOps", "QuantConfig", "QuantConv2d", "QuantLinear", "ReconstructConfig", "TernaryWeights",
    "WeightFormat", "calibrate_activations", "correct_bias", "count_ops", "gptq_ternarize", "paper_speedup",
    "post_training_quantize", "quant_layers", "quantize_model", "reconstruct_blocks", "reconstruction_blocks",
    "reestimate_batchnorm", "repair_weights", "reset_activation_quantizers", "ternarize",
]
