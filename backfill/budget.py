"""A worker's time budget (ARCHITECTURE.md rule 7): stop in time, with the position saved."""

from __future__ import annotations

from dataclasses import dataclass, field

from livemigrate.clock import Clock


@dataclass
class Budget:
    """Time left for one worker process, and whether another page or write fits in it.

    A page is started only if the time left exceeds ``margin`` plus the slowest recent page (an
    estimate kept as a moving maximum that decays). The estimate is only a hint: a page slower
    than any measured so far (the first page, a cap lowered mid-run) is cut at the budget, since
    the page writer sends no write once ``writes_left()`` is spent and the worker checkpoints the
    written prefix. So a run ends within its budget plus one write's time (issue 10, item 2).

    Parameters
    ----------
    deadline:
        Monotonic clock time at which the worker must have stopped.
    clock:
        Time source (FakeClock in tests).
    margin:
        No new page or unit is started in the last ``margin`` seconds (claims, the last
        checkpoint, releasing leases).
    """

    deadline: float
    clock: Clock
    margin: float = 0.5
    _page_seconds: float = field(default=0.0)

    @classmethod
    def starting_now(cls, seconds: float, clock: Clock, margin: float = 0.5) -> Budget:
        return cls(deadline=clock.monotonic() + seconds, clock=clock, margin=margin)

    def remaining(self) -> float:
        return self.deadline - self.clock.monotonic()

    def writes_left(self) -> float:
        """Seconds during which reads and writes may still be sent (0 or less: none).

        Up to the deadline itself: the margin is for starting no new page or unit near the
        end, the writes of a page under way may use it.
        """
        return self.remaining()

    def record_page(self, seconds: float) -> None:
        """Remember how long a page took (the estimate decays slowly towards faster pages)."""
        self._page_seconds = max(seconds, self._page_seconds * 0.8)

    def allows_page(self) -> bool:
        return self.remaining() > self.margin + self._page_seconds

    def expired(self) -> bool:
        return self.remaining() <= self.margin

    def end_now(self) -> None:
        """Spend the budget at once (Ctrl-C): no new page, no new write; the written prefix of
        each page in flight is checkpointed and the leases are released."""
        self.deadline = self.clock.monotonic() - self.margin - 1.0
