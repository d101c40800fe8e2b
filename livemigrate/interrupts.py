"""Ctrl-C and SIGTERM for commands that must clean up (cutover, rollback, backfill).

``raise_on_signals`` makes SIGTERM behave like Ctrl-C (``KeyboardInterrupt``), so one ``except``
path lifts a cutover's fence whichever signal arrived. ``deferred`` holds both signals back
while cleanup runs, so a second Ctrl-C cannot cut the cleanup itself short; they are delivered
when it ends.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The command was stopped by a signal (Ctrl-C or SIGTERM)."""


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


def raise_on_signals() -> None:
    """SIGINT and SIGTERM raise ``Interrupted`` in the main thread."""
    if threading.current_thread() is threading.main_thread():
        for signum in SIGNALS:
            signal.signal(signum, _raise)


@contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back for the duration (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def on_first_signal(stop: Callable[[], None], say: Callable[[str], None]) -> None:
    """The first SIGINT/SIGTERM calls ``stop`` (a clean stop); a second one interrupts hard."""
    if threading.current_thread() is not threading.main_thread():
        return
    seen: list[int] = []

    def handle(signum: int, frame: FrameType | None) -> None:
        if seen:
            raise Interrupted(signal.Signals(signum).name)
        seen.append(signum)
        say(
            f"{signal.Signals(signum).name}: stopping after the pages in flight and saving the "
            "position (press Ctrl-C again to stop at once)"
        )
        stop()

    for signum in SIGNALS:
        signal.signal(signum, handle)
