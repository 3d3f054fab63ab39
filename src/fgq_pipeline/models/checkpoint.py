"""Weight files: safetensors for what we write, plus torch pickles (weights only) for reference
checkpoints published elsewhere, such as DataParallel-trained CIFAR models.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..atomic import atomic_path

SAFETENSORS_SUFFIX = ".safetensors"
DATA_PARALLEL_PREFIX = "module."
BATCH_NORM_COUNTER = "num_batches_tracked"
MISMATCHES_SHOWN = 5
UNREADABLE_FILE_ERRORS = (
    SafetensorError,
    pickle.UnpicklingError,
    zipfile.BadZipFile,
    RuntimeError,
    EOFError,
    OSError,
    ValueError,
)


def save_weights(
    model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None
) -> Path:
    """Write the state_dict as safetensors, atomically, so a crash never leaves a torn file."""
    path = Path(path)
    if metadata is not None and not all(
        isinstance(key, str) and isinstance(value, str) for key, value in metadata.items()
    ):
        raise ValueError(
            f"metadata for {path} must map str to str (safetensors stores text only), "
            f"got {metadata!r}; convert values with str() or json.dumps()"
        )
    tensors = {
        name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()
    }
    with atomic_path(path) as temp:
        save_file(tensors, str(temp), metadata=metadata)
    return path


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load weights strictly, naming the file and the offending keys when they do not fit."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; check the path or train first")
    state_dict = _strip_data_parallel_prefix(_read_state_dict(path))
    state_dict = _add_missing_batch_norm_counters(model, state_dict)
    _check_fits(model, state_dict, path)
    _check_finite(state_dict, path)
    model.load_state_dict(state_dict, strict=True)
    return model


def read_metadata(path: str | Path) -> dict[str, str]:
    """The text metadata ``save_weights`` stored in a safetensors file; torch pickles carry none."""
    path = Path(path)
    if path.suffix != SAFETENSORS_SUFFIX:
        return {}
    try:
        with safe_open(path, framework="pt") as handle:
            return handle.metadata() or {}
    except UNREADABLE_FILE_ERRORS as error:
        raise ValueError(
            f"checkpoint {path} could not be read ({error}); it is corrupt or not a weights file"
        ) from error


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == SAFETENSORS_SUFFIX:
            loaded = load_file(path, device="cpu")
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except UNREADABLE_FILE_ERRORS as error:
        raise ValueError(
            f"checkpoint {path} could not be read ({error}); it is corrupt or not a weights file"
        ) from error
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in loaded.items()
    ):
        raise ValueError(
            f"checkpoint {path} holds no state_dict (a dict of name -> tensor, "
            "optionally under a 'state_dict' key)"
        )
    return loaded


def _strip_data_parallel_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DataParallel saves every key as 'module.<name>'; the bare model expects '<name>'."""
    return {key.removeprefix(DATA_PARALLEL_PREFIX): value for key, value in state_dict.items()}


def _add_missing_batch_norm_counters(
    model: nn.Module, state_dict: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Old checkpoints (such as the reference CIFAR ResNets) have no BatchNorm step counters.

    Zeros stand in for them, only beside running statistics the checkpoint does hold, so the
    load stays strict for everything else. The counter only matters for momentum=None.
    """
    filled = dict(state_dict)
    for key in model.state_dict():
        if key.endswith(BATCH_NORM_COUNTER) and key not in filled:
            running_mean = key.removesuffix(BATCH_NORM_COUNTER) + "running_mean"
            if running_mean in filled:
                filled[key] = torch.zeros((), dtype=torch.long)
    return filled


def _check_fits(model: nn.Module, state_dict: dict[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    mismatched = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state_dict and state_dict[key].shape != value.shape
    ]
    problems = [
        _summarise(label, items)
        for label, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatch", mismatched),
        )
        if items
    ]
    if problems:
        raise ValueError(
            f"checkpoint {path} does not fit {type(model).__name__}: " + ", ".join(problems)
        )


def _check_finite(state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """NaN or Inf weights would quantize to garbage silently (every group scale becomes NaN)."""
    bad = [key for key, value in state_dict.items() if value.is_floating_point() and not torch.isfinite(value).all()]
    if bad:
        raise ValueError(f"checkpoint {path} holds NaN or Inf values in {_summarise('tensors', bad)}; it is corrupt "
                         "or comes from a diverged training run - use another checkpoint")


def _summarise(label: str, items: list[str]) -> str:
    """First few items only: a wrong architecture can mismatch hundreds of keys."""
    hidden = len(items) - MISMATCHES_SHOWN
    return f"{label} {items[:MISMATCHES_SHOWN]}" + (f" (+{hidden} more)" if hidden > 0 else "")
