"""One on-disk layout for every image split: ``x`` uint8 (N, H, W, C) and ``y`` int64 (N,).

Digits and CIFAR-10 share this layout so the data modules only differ in how they normalise.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from ..atomic import atomic_path


def load_npz_split(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate one split; bad files fail here rather than deep inside a training run."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"npz split {path} does not exist; run the data preparation step to create it"
        )
    arrays = _read_arrays(path)
    missing = [key for key in ("x", "y") if key not in arrays]
    if missing:
        raise ValueError(
            f"npz split {path} lacks arrays {missing}; expected 'x' (N,H,W,C) uint8 "
            "and 'y' (N,) int64 - recreate it with save_npz_split"
        )
    x, y = arrays["x"], arrays["y"]
    _check_arrays(x, y, source=str(path))
    return x, y.astype(np.int64, copy=False)


def save_npz_split(path: str | Path, x: np.ndarray, y: np.ndarray) -> Path:
    """Write a split atomically so an interrupted run never leaves a half-written file behind."""
    path = Path(path)
    _check_arrays(x, y, source=f"arrays for {path}")
    with atomic_path(path) as temp, temp.open("wb") as temp_file:
        np.savez_compressed(temp_file, x=x, y=y.astype(np.int64, copy=False))
    return path


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Read whichever of 'x'/'y' exist; every way the file can fail to decode becomes one error."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single .npy array, not an archive of named arrays")
        with loaded as archive:
            return {key: archive[key] for key in ("x", "y") if key in archive.files}
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError) as error:
        raise ValueError(
            f"npz split {path} is not a readable npz archive ({error}); delete and recreate it"
        ) from error


def _check_arrays(x: np.ndarray, y: np.ndarray, source: str) -> None:
    if x.dtype != np.uint8 or x.ndim != 4:
        raise ValueError(
            f"{source}: 'x' must be uint8 with shape (N, H, W, C), "
            f"got dtype {x.dtype} and shape {x.shape}"
        )
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"{source}: 'y' must be integer labels with shape (N,), "
            f"got dtype {y.dtype} and shape {y.shape}"
        )
    if len(x) != len(y):
        raise ValueError(f"{source}: 'x' has {len(x)} images but 'y' has {len(y)} labels")
