"""Ctrl-C and SIGTERM raise while a job runs, but never inside a write to the tracking store."""

import os
import signal
import time
from collections.abc import Callable

import pytest

from fgq_pipeline.stop_signals import stop_signals_raise

STORE_WRITE = '''
def write():
    os.kill(os.getpid(), signum)
    time.sleep(0.3)  # the signal arrives here, inside the write
    events.append("written")
'''


def store_write(signum: int, events: list) -> Callable[[], None]:
    """A stand-in for a write to the store: a function of an ``mlflow`` module that is signalled mid-way."""
    namespace = {"__name__": "mlflow.store_write_stand_in", "os": os, "time": time, "signum": signum, "events": events}
    exec(STORE_WRITE, namespace)
    return namespace["write"]


@pytest.mark.parametrize(("signum", "raised"), [(signal.SIGTERM, SystemExit), (signal.SIGINT, KeyboardInterrupt)])
def test_a_stop_signal_raises_once_the_store_write_under_way_is_done(signum, raised):
    events = []
    with pytest.raises(raised) as stop:
        with stop_signals_raise():
            store_write(signum, events)()
            events.append("after the write")
            time.sleep(2)
    assert events == ["written", "after the write"]
    if raised is SystemExit:
        assert stop.value.code == 128 + signal.SIGTERM


def test_handlers_are_restored_after_the_block():
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    with stop_signals_raise():
        assert signal.getsignal(signal.SIGTERM) is not before[signal.SIGTERM]
    assert {signum: signal.getsignal(signum) for signum in before} == before


def test_an_exit_without_status_after_a_sigterm_exits_143():
    """Lightning answers SIGTERM during a fit with its own SystemExit, which carries no status."""
    with pytest.raises(SystemExit) as stop:
        with stop_signals_raise():
            store_write(signal.SIGTERM, [])()
            raise SystemExit
    assert stop.value.code == 128 + signal.SIGTERM
