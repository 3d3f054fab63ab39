"""fgq-pipeline: Ternary Neural Networks with Fine-Grained Quantization, as a reproducible pipeline."""

from .quant import (
    QuantConfig,
    TernaryWeights,
    count_ops,
    post_training_quantize,
    quantize_model,
    ternarize,
)

__all__ = ["QuantConfig", "TernaryWeights", "count_ops", "post_training_quantize", "quantize_model", "ternarize"]
__version__ = "0.1.0"
