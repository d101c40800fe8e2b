"""Injectable time, so leases, budgets and backoff are tested without sleeping.

``now()`` is wall-clock time: what is stored in the control table and compared between
machines (lease expiry, heartbeats). ``monotonic()`` never jumps: a lease holder's local
deadline (``livemigrate.fencing``) is kept on it, so a clock that jumps cannot extend it.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float: ...

    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))


class FakeClock:
    """A clock that only moves when told to (sleep advances it at once).

    ``jump`` moves the wall clock alone (an NTP step), leaving ``monotonic`` where it was.
    """

    def __init__(self, start: float = 1_000_000.0) -> None:
        self._now = start
        self._mono = 0.0
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds
            self._mono += seconds

    def jump(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


class Every:
    """``due()`` is True at most once per ``seconds`` of ``clock`` (first after ``seconds``
    from creation); thread-safe."""

    def __init__(self, seconds: float, clock: Clock) -> None:
        self.seconds = seconds
        self.clock = clock
        self._last = clock.monotonic()
        self._lock = threading.Lock()

    def due(self) -> bool:
        with self._lock:
            now = self.clock.monotonic()
            if now - self._last < self.seconds:
                return False
            self._last = now
            return True
