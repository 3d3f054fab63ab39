"""Keep Numba's on-disk cache from running a kernel that has changed since a cached caller was compiled.

Numba checks a cached function against its own source file only. The compiled pass links the
kernels of other modules into its cached code, so after a kernel's file changes it would still run
the old kernel, and a changed signature crashes it. Here a digest of every source file that defines
or feeds a cached function is kept beside the cache; when it differs (the code was updated in place),
those files' modification times are renewed, which invalidates every cached entry at once.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

KERNELS = Path(__file__).resolve().parent
CACHED_SOURCES = (*sorted(KERNELS.glob("*.py")), KERNELS.parent / "bench" / "ceilings.py")
STAMP = KERNELS / "__pycache__" / "numba-sources.sha256"


def sources_digest(sources: tuple[Path, ...]) -> str:
    """SHA-256 over the files' names and contents, in the given order."""
    digest = hashlib.sha256()
    for source in sources:
        digest.update(source.name.encode() + b"\0" + source.read_bytes() + b"\0")
    return digest.hexdigest()


def invalidate_if_changed(sources: tuple[Path, ...] = CACHED_SOURCES, stamp: Path = STAMP) -> bool:
    """Renew the sources' modification times if their digest differs from ``stamp``'s (or there is no
    stamp yet: entries from before it may be stale) and record the new digest; True if it did. A
    read-only install, where nothing can be written, is left as it is."""
    digest = sources_digest(sources)
    if stamp.is_file() and stamp.read_text() == digest:
        return False
    try:
        for source in sources:
            os.utime(source)
        stamp.parent.mkdir(exist_ok=True)
        partial = stamp.with_name(f"{stamp.name}.{os.getpid()}")
        partial.write_text(digest)
        partial.replace(stamp)
    except OSError:
        return False
    return True
