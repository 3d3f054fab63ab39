"""ImageNet classifiers from torchvision (AlexNet, ResNet-18/50/101, ...), the networks the FGQ
paper reports on beyond CIFAR. Architecture names and weight names are checked up front so a typo
fails with the valid choices instead of deep inside torchvision or after a download.
"""

from __future__ import annotations

import difflib

import torchvision.models
from torch import nn

ARCHITECTURES = tuple(torchvision.models.list_models(module=torchvision.models))
PRETRAINED_CATEGORIES = "categories"


def torchvision_model(arch: str, num_classes: int = 1000, weights: str | None = None) -> nn.Module:
    """Build ``arch``, randomly initialised unless ``weights`` names torchvision weights.

    ``weights`` is "DEFAULT" or an enum member such as "IMAGENET1K_V1"; torchvision downloads
    them, so it needs network access. Local weight files go through ``model.checkpoint`` instead.
    """
    if arch not in ARCHITECTURES:
        close = difflib.get_close_matches(arch, ARCHITECTURES, n=3)
        hint = f"did you mean {close}? " if close else ""
        raise ValueError(
            f"unknown torchvision architecture {arch!r}; {hint}"
            "see torchvision.models.list_models() for the classification models"
        )
    if weights is None:
        return torchvision.models.get_model(arch, num_classes=num_classes)
    weights_enum = torchvision.models.get_model_weights(arch)
    try:
        chosen = weights_enum.verify(weights)
    except KeyError:
        names = list(weights_enum.__members__)
        raise ValueError(
            f"{arch} has no torchvision weights {weights!r}; choose one of {names} or null"
        ) from None
    pretrained_classes = len(chosen.meta[PRETRAINED_CATEGORIES])
    if num_classes != pretrained_classes:
        raise ValueError(
            f"{arch} weights {weights!r} have {pretrained_classes} classes but num_classes is "
            f"{num_classes}; set num_classes={pretrained_classes} or weights=null"
        )
    return torchvision.models.get_model(arch, weights=chosen)
