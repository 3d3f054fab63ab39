"""Network definitions and weight checkpoint I/O."""

from fgq_pipeline.models.checkpoint import load_weights, read_metadata, save_weights
from fgq_pipeline.models.cifar_resnet import CifarResNet
from fgq_pipeline.models.digits_cnn import DigitsCNN
from fgq_pipeline.models.torchvision_models import torchvision_model

__all__ = ["CifarResNet", "DigitsCNN", "load_weights", "read_metadata", "save_weights", "torchvision_model"]
