"""Ctrl-C and SIGTERM as exceptions while a job runs, so its MLflow runs end KILLED on the way out.

Python's default on SIGTERM (``kill``, a batch scheduler's time limit) is to die without unwinding,
which leaves the runs RUNNING. Here SIGTERM raises SystemExit(143) and SIGINT KeyboardInterrupt, but
never while the tracking store is being written or a run ended (an exception in the middle of an
SQLite transaction leaves the database locked for the write that ends the run): a signal that lands
there is sent again a moment later. Lightning, during a fit, also answers SIGTERM, with an exit that
carries no status; the job still exits 143.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Code a stop must not interrupt: writes to the tracking store, and the ending of runs.
STORE_MODULES = ("mlflow", "sqlalchemy", "sqlite3", "fgq_pipeline.tracking")
RETRY_SECONDS = 0.05


@contextmanager
def stop_signals_raise() -> Iterator[None]:
    """Within the block, SIGINT raises KeyboardInterrupt and SIGTERM SystemExit(143), outside store
    writes. Signal handlers belong to the main thread; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stop = _StopRequest()
    previous = {signum: signal.signal(signum, stop.handle) for signum in STOP_SIGNALS}
    try:
        yield
    except SystemExit as exit_:
        if stop.signum == signal.SIGTERM and not exit_.code:
            raise SystemExit(128 + signal.SIGTERM) from exit_
        raise
    finally:
        stop.cancel_retry()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class _StopRequest:
    """The stop signal received, raised once, outside store writes."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.raised = False
        self.retry: threading.Timer | None = None

    def handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        if self.raised:  # already on the way out
            return
        if _inside_store_write(frame):
            self.cancel_retry()
            self.retry = threading.Timer(RETRY_SECONDS, os.kill, (os.getpid(), signum))
            self.retry.start()
            return
        self.raised = True
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    def cancel_retry(self) -> None:
        if self.retry is not None:
            self.retry.cancel()


def _inside_store_write(frame: FrameType | None) -> bool:
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if any(name == module or name.startswith(module + ".") for module in STORE_MODULES):
            return True
        frame = frame.f_back
    return False
