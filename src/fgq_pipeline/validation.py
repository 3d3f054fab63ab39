"""Checks a whole config before any heavy work starts, so a typo fails in a second, not after an
hour of PTQ; and the errors that are the user's to fix, which end a run with one clear line."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from omegaconf import DictConfig

from .checks import require_int
from .devices import resolve_device
from .project import resolve_path

USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
EXIT_USER_ERROR = 2
OUTPUT_PATHS = ("data_manifest", "fp32_weights", "fp32_metrics", "ptq_results", "ptq_metrics", "ptq_progress",
                "finetuned_weights", "finetune_checkpoints", "finetune_results", "finetune_metrics", "reports",
                "cost_tables", "bench_reports", "bench_metrics", "exports", "export_metrics")
T = TypeVar("T")

EVALUATION_SPLITS = ("test", "holdout")


def validate_config(cfg: DictConfig) -> None:
    """Every quantization setting the run can reach, the calibration and fine-tune settings, and
    that every output location can be written."""
    from .calibration import check_augment_setting
    from .tasks.export_settings import check_export_settings
    from .tasks.ptq_grid import (  # the method's checks, with torch
        finetune_quant_config,
        ptq_grid,
        quant_config,
        reconstruct_config,
    )

    quant_config(cfg)
    if "device" in cfg:
        resolve_device(cfg.device)
    if "ptq" in cfg:
        ptq_grid(cfg)
    if "reconstruct" in cfg:
        reconstruct_config(cfg)
    if "finetune" in cfg:
        finetune_quant_config(cfg)
        require_int("finetune.epochs", cfg.finetune.epochs)
        require_int("finetune.bn_reestimate_batches", cfg.finetune.bn_reestimate_batches, minimum=0)
    if "export" in cfg:
        check_export_settings(cfg.export)
    if "calibration" in cfg:
        require_int("calibration.num_images", cfg.calibration.num_images,
                      hint="calibration needs at least one training image")
        check_augment_setting(cfg.calibration.augment)
    if "evaluate_on" in cfg:
        if cfg.evaluate_on not in EVALUATION_SPLITS:
            raise ValueError(f"evaluate_on must be one of {EVALUATION_SPLITS}, got {cfg.evaluate_on!r}")
        require_int("holdout_images", cfg.holdout_images, hint="the holdout split needs at least one image")
    if "paths" in cfg:
        for key in OUTPUT_PATHS:
            if cfg.paths.get(key):
                check_writable(f"paths.{key}", cfg.paths[key])


def check_writable(what: str, path: str | Path) -> None:
    """The nearest existing directory at or above ``path`` must be a writable directory."""
    target = resolve_path(path)
    existing = next(p for p in (target, *target.parents) if p.exists())
    if existing != target and not existing.is_dir():
        raise NotADirectoryError(f"{what}={str(path)!r} cannot be created: {existing} is a file, not a directory; "
                                 "point it at a directory you can write")
    directory = existing if existing.is_dir() else existing.parent
    if not os.access(directory, os.W_OK | os.X_OK):
        raise PermissionError(f"{what}={str(path)!r} is not writable ({directory} is read-only for this user); "
                              "point it at a directory you can write")


def exit_on_user_error(program: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorator: a user error prints ``program: error: message`` and exits with status 2; bugs
    still raise with their traceback."""
    def decorate(main: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(main)
        def wrapper(*args, **kwargs) -> T:
            try:
                return main(*args, **kwargs)
            except USER_ERRORS as error:
                print(f"{program}: error: {_message(error)}", file=sys.stderr)
                raise SystemExit(EXIT_USER_ERROR) from None
        return wrapper
    return decorate


def _message(error: Exception) -> str:
    """The error's own message; for one re-raised from a DataLoader worker, without the worker's
    traceback that torch folds into it."""
    message = str(error)
    if "Original Traceback" in message:
        return message.strip().splitlines()[-1]
    return message
