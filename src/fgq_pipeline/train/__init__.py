"""Training and evaluation of classifiers, full precision or quantized alike."""

from fgq_pipeline.train.evaluate import evaluate
from fgq_pipeline.train.fit import fit
from fgq_pipeline.train.module import ClassifierModule

__all__ = ["ClassifierModule", "evaluate", "fit"]
