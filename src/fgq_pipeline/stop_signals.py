"""Ctrl-C and SIGTERM as exceptions while a job runs, so its MLflow runs end KILLED on the way out.

Python's default on SIGTERM (``kill``, a batch scheduler's time limit) is to die without unwinding,
which leaves the runs RUNNING. Here SIGTERM raises SystemExit(143) and SIGINT KeyboardInterrupt, but
never inside a write to the tracking store: an exception raised in the middle of an SQLite
transaction leaves the database locked for the very write that ends the run. A signal that lands
there is sent again a moment later, once the write is done.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
STORE_MODULES = ("mlflow", "sqlalchemy", "sqlite3")  # frames of a write to the tracking store
RETRY_SECONDS = 0.05


@contextmanager
def stop_signals_raise() -> Iterator[None]:
    """Within the block, SIGINT raises KeyboardInterrupt and SIGTERM SystemExit(143), outside store
    writes. Signal handlers belong to the main thread; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _raise_stop) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    if _inside_store_write(frame):
        threading.Timer(RETRY_SECONDS, os.kill, (os.getpid(), signum)).start()
        return
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the runs' ending short
    raise SystemExit(128 + signum)


def _inside_store_write(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_globals.get("__name__", "").partition(".")[0] in STORE_MODULES:
            return True
        frame = frame.f_back
    return False
