"""The backfill's progress display: rich's bar on a terminal with the log kept above it, log
lines elsewhere (issue 19, item 6)."""

from __future__ import annotations

import io
import logging
import os
import pty
import re
import select
from collections.abc import Iterator

import pytest

from backfill.progress import Progress
from backfill.writes import Stats, Tally

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture
def terminal() -> Iterator[tuple[io.TextIOWrapper, int]]:
    """A pseudo-terminal: (the file a program writes to, the fd the screen is read from)."""
    screen, tty = pty.openpty()
    out = io.TextIOWrapper(os.fdopen(tty, "wb", buffering=0), encoding="utf-8")
    yield out, screen
    out.close()
    os.close(screen)


def read_screen(fd: int) -> str:
    chunks = []
    while select.select([fd], [], [], 0.2)[0]:
        chunks.append(os.read(fd, 65536))
    return b"".join(chunks).decode("utf-8", "replace")


def lines_of(raw: str) -> list[str]:
    """What the terminal shows, line by line (escape codes and carriage returns dropped)."""
    shown = [ANSI.sub("", part).strip() for part in re.split(r"[\r\n]+", raw)]
    return [text for text in shown if text]


def test_on_a_terminal_the_bar_shows_the_totals_and_log_lines_stay_above_it(
    terminal: tuple[io.TextIOWrapper, int],
) -> None:
    """GIVEN a backfill on a terminal whose log goes to the same terminal WHEN a warning is
    logged while the bar shows THEN it is a line of its own (a ``\\r`` line had it glued to
    its end), and the last bar reads 100% of 10 items."""
    out, screen = terminal
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    stats = Stats()
    try:
        with Progress(stats, total_items=10, already_read=0, out=out, interval=60) as progress:
            stats.add(Tally(read=4, written=4))
            progress.report()
            logging.getLogger("livemigrate.outage").warning("DynamoDB is failing; degraded")
            stats.add(Tally(read=6, written=6))
        assert handler in root.handlers  # given back when the bar is gone
    finally:
        root.removeHandler(handler)
    out.flush()
    shown = lines_of(read_screen(screen))
    assert "WARNING DynamoDB is failing; degraded" in shown
    assert any("40.0%" in text and "4/10 items" in text for text in shown)
    assert "100.0%" in shown[-1] and "10/10 items" in shown[-1]


def test_elsewhere_each_report_is_a_log_line_and_nothing_is_written_to_the_stream(
    caplog: pytest.LogCaptureFixture,
) -> None:
    out = io.StringIO()  # not a terminal: a pipe, a file, CI
    stats = Stats()
    with (
        caplog.at_level(logging.INFO, logger="backfill.progress"),
        Progress(stats, total_items=10, already_read=5, out=out, interval=60),
    ):
        stats.add(Tally(read=5, written=4, superseded=1))
    assert out.getvalue() == ""
    assert "backfill progress read=5 written=4 superseded=1" in caplog.text
    assert "100.0%  10/10 items" in caplog.text
