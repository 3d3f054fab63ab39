"""What FP32 weights the pipeline saves say about their training: the model, and whether training
augmented its images (and how), so that calibration can later show the model images the way it
learned them. Files from elsewhere (torch pickles, older safetensors) record nothing; that is not
an error.
"""

from __future__ import annotations

import json
from pathlib import Path

from .models import read_metadata

# One metadata key holding JSON: safetensors writes several keys in a random order, and the FP32
# weights are a DVC output that must be byte-stable.
TRAINING_METADATA = "training"


def trained_metadata(model_name: str, datamodule) -> dict[str, str]:
    """The record of weights just trained on ``datamodule`` with its own ``augment`` setting."""
    augment = datamodule.augment
    return _metadata({"model": model_name, "augment": augment, "transform": datamodule.describe_transform(augment)})


def copied_metadata(model_name: str, source: Path | None) -> dict[str, str]:
    """The record of weights taken from ``source`` untouched: whatever ``source`` recorded about its
    training (nothing for torchvision's weights, ``source`` None), under this model's name."""
    return _metadata({**(recorded_training(source) if source else {}), "model": model_name})


def recorded_training(path: Path) -> dict:
    """The training record saved with the weights at ``path``; empty if they carry none."""
    text = read_metadata(path).get(TRAINING_METADATA)
    if text is None:
        return {}
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} holds a {TRAINING_METADATA!r} record that is not JSON ({error}): {text!r}") from error
    if not isinstance(record, dict) or not isinstance(record.get("augment", False), bool):
        raise ValueError(f"{path} holds a {TRAINING_METADATA!r} record {text!r}; expected a JSON object "
                         "whose 'augment', where present, is true or false")
    return record


def _metadata(record: dict) -> dict[str, str]:
    return {TRAINING_METADATA: json.dumps(record, sort_keys=True)}
