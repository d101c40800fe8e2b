"""Progress of a running backfill: a one-line display on a terminal, log lines otherwise."""

from __future__ import annotations

import logging
import threading
import time
from types import TracebackType
from typing import TextIO

from backfill.writes import Stats
from livemigrate.retention import seconds_left

log = logging.getLogger(__name__)


def _clock_text(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def line(read: int, total: int, rate: float) -> str:
    """The display text: percent of the source's ItemCount, items/s and ETA."""
    percent = 100.0 * read / total if total else 0.0
    eta = seconds_left(total - read, rate) if total else None
    return (
        f"backfill {min(percent, 100.0):5.1f}%  {read}/{total or '?'} items  "
        f"{rate:,.0f} items/s  ETA {_clock_text(eta)}"
    )


class Progress:
    """Reports ``stats`` every ``interval`` seconds until closed.

    Parameters
    ----------
    stats:
        This process's counters.
    total_items:
        The source's ItemCount (an estimate DynamoDB refreshes every few hours).
    already_read:
        Items read by earlier runs (from the METRICS counters), so percent is overall.
    out:
        Where a terminal display goes; log lines are used when it is not a TTY.
    """

    def __init__(
        self,
        stats: Stats,
        total_items: int,
        already_read: int,
        out: TextIO,
        interval: float | None = None,
    ) -> None:
        self.stats = stats
        self.total = total_items
        self.already = already_read
        self.out = out
        self.tty = out.isatty()
        self.interval = interval if interval is not None else (1.0 if self.tty else 10.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._started = time.monotonic()

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self.report()
        if self.tty:
            print(file=self.out)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.report()

    def report(self) -> None:
        snap = self.stats.snapshot()
        elapsed = max(1e-6, time.monotonic() - self._started)
        rate = snap.read / elapsed
        text = line(self.already + snap.read, self.total, rate)
        if self.tty:
            print(f"\r{text}", end="", file=self.out, flush=True)
        else:
            log.info(
                "backfill progress read=%d written=%d superseded=%d dead_letters=%d "
                "items_per_s=%.1f | %s",
                snap.read,
                snap.written,
                snap.superseded,
                snap.dead,
                rate,
                text,
            )
