"""fgq-pipeline: Ternary Neural Networks with Fine-Grained Quantization, as a reproducible pipeline.

The method's names load on first use (PEP 562), so the numpy-only integer path
(``fgq_pipeline.kernels``) can be imported without torch.
"""

__all__ = ["QuantConfig", "TernaryWeights", "count_ops", "post_training_quantize", "quantize_model", "ternarize"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in __all__:
        from . import quant

        return getattr(quant, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
