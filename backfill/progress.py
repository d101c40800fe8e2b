"""Progress of a running backfill: a bar on a terminal (rich), log lines otherwise.

On a terminal, rich draws the bar and keeps it below the log: while it shows, the log records
that would go to the same terminal are printed above it by rich (a raw ``\r`` line had them
glued to its end). Elsewhere (a pipe, a file, CI) each report is one log line, and rich is not
even imported. Nothing goes to stdout: ``--json`` prints only its JSON there.
"""

from __future__ import annotations

import logging
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING, TextIO

from backfill.writes import Stats
from livemigrate.retention import seconds_left

if TYPE_CHECKING:
    from rich.console import Console

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
        self._bar: Bar | None = None

    def __enter__(self) -> Progress:
        if self.tty:
            self._bar = Bar(self.out)
            self._bar.start()
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
        try:
            self.report()
        finally:
            if self._bar is not None:
                self._bar.stop()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.report()

    def report(self) -> None:
        snap = self.stats.snapshot()
        elapsed = max(1e-6, time.monotonic() - self._started)
        rate = snap.read / elapsed
        text = line(self.already + snap.read, self.total, rate)
        if self._bar is not None:
            self._bar.show(text, self.already + snap.read, self.total)
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


class Bar:
    """The terminal display: rich's progress bar with ``line``'s text (percent, rate, ETA),
    redrawn on each report, and the log records bound for the same terminal printed above it.
    """

    def __init__(self, out: TextIO) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, TextColumn
        from rich.progress import Progress as RichProgress

        self.console = Console(file=out)
        self.out = out
        self.progress = RichProgress(
            BarColumn(), TextColumn("{task.description}"), console=self.console, auto_refresh=False
        )
        self.task = self.progress.add_task("backfill", total=None)
        self._moved: list[tuple[logging.Handler, logging.Handler]] = []

    def start(self) -> None:
        self.progress.start()
        root = logging.getLogger()
        for handler in list(root.handlers):
            if isinstance(handler, logging.StreamHandler) and handler.stream is self.out:
                above = AboveTheBar(self.console, handler)
                root.removeHandler(handler)
                root.addHandler(above)
                self._moved.append((handler, above))

    def show(self, text: str, read: int, total: int) -> None:
        done = min(read, total) if total else read
        self.progress.update(self.task, description=text, completed=done, total=total or None)
        self.progress.refresh()

    def stop(self) -> None:
        self.progress.stop()  # the last bar stays on screen, the cursor below it
        root = logging.getLogger()
        for handler, above in self._moved:
            root.removeHandler(above)
            root.addHandler(handler)
        self._moved.clear()


class AboveTheBar(logging.Handler):
    """Prints log records through the bar's console, so they land above the bar; formatted and
    filtered as by the handler it stands in for."""

    def __init__(self, console: Console, like: logging.Handler) -> None:
        super().__init__(like.level)
        self.console = console
        self.setFormatter(like.formatter)
        for kept in like.filters:
            self.addFilter(kept)

    def emit(self, record: logging.LogRecord) -> None:
        self.console.print(self.format(record), markup=False, highlight=False, soft_wrap=True)
