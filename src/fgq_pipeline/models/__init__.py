"""Network definitions and weight checkpoint I/O."""

from fgq_pipeline.models.checkpoint import load_weights, save_weights
from fgq_pipeline.models.digits_cnn import DigitsCNN

__all__ = ["DigitsCNN", "load_weights", "save_weights"]
