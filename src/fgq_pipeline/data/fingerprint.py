"""A content fingerprint of a dataset directory, so DVC reruns what depends on data that changed.

The data may live outside the repository (a read-only shared copy, an ImageNet directory) where DVC
cannot track it as a stage output; the prepare stage records this fingerprint instead.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

CONTENT_HASH_LIMIT_BYTES = 1 << 30  # above this, names and sizes stand in for contents


def directory_fingerprint(root: str | Path) -> str:
    """sha256 over every file's relative path and contents (or size, for very large datasets)."""
    root = Path(root)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    if not files:
        raise FileNotFoundError(f"data directory {root} holds no files: point data.root at the dataset")
    hash_contents = sum(p.stat().st_size for p in files) <= CONTENT_HASH_LIMIT_BYTES
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(root)).encode())
        if hash_contents:
            with path.open("rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
        else:
            digest.update(str(path.stat().st_size).encode())
    return digest.hexdigest()
