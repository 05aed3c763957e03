"""Ctrl-C and SIGTERM (a scheduler, `kill`) stop a sweep the same way: the first asks the Tune run
to end with its state saved (Tune's SIGUSR1 handler), so `lt-sweep resume` continues it; outside
a Tune run, or a second time, it is a KeyboardInterrupt. Tune's own SIGINT handler is off (it
would hide whether the run was interrupted), and Ray's core installs a SIGTERM handler that
aborts the driver when it connects, so ``stop_on_signals`` runs again after ``ray.init``."""

from __future__ import annotations

import os
import signal
import threading

INTERRUPTED = threading.Event()  # set by the first Ctrl-C or SIGTERM


def _interrupt(signum, frame) -> None:
    first = not INTERRUPTED.is_set()
    INTERRUPTED.set()
    tune_handler = signal.getsignal(signal.SIGUSR1)
    if first and callable(tune_handler):  # a Tune run is on: it ends, its state saved
        tune_handler(signal.SIGUSR1, frame)
        return
    raise KeyboardInterrupt


def stop_on_signals() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)


def tune_run_over() -> None:
    """After a Tune run: its SIGUSR1 handler would swallow the next signal."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
