"""The project's files: where the root is, paths relative to it, JSON outputs written atomically.

Imports neither torch nor Lightning, so tracking, params and the stage runner stay light.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .atomic import write_text_atomically

SOURCE_CHECKOUT = Path(__file__).resolve().parents[2]  # the repository of an editable install


def project_root() -> Path:
    """$FGQ_PROJECT_ROOT, else the nearest directory above the cwd holding dvc.yaml, else this checkout."""
    if "FGQ_PROJECT_ROOT" in os.environ:
        return Path(os.environ["FGQ_PROJECT_ROOT"]).resolve()
    cwd = Path.cwd().resolve()
    return next((d for d in (cwd, *cwd.parents) if (d / "dvc.yaml").exists()), SOURCE_CHECKOUT)


def resolve_path(path: str | Path) -> Path:
    path = Path(path).expanduser()
    return path if path.is_absolute() else project_root() / path


def write_json(path: str | Path, payload) -> Path:
    """Write JSON atomically (temp file + rename) so a failed run never leaves half a file."""
    return write_text_atomically(resolve_path(path), json.dumps(payload, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path):
    path = resolve_path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run the stage that writes it first (`dvc repro`)")
    return json.loads(path.read_text())
