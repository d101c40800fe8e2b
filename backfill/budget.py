"""A worker's time budget (ARCHITECTURE.md rule 7): stop before the limit, never in a page."""

from __future__ import annotations

from dataclasses import dataclass, field

from livemigrate.clock import Clock


@dataclass
class Budget:
    """Time left for one worker process, and whether another page fits in it.

    A page is started only if the time left exceeds ``margin`` plus the slowest recent page (an
    estimate kept as a moving maximum that decays), so a worker ends with its position saved
    and its lease released rather than being killed mid-page.

    Parameters
    ----------
    deadline:
        Clock time at which the worker must have stopped.
    clock:
        Time source (FakeClock in tests).
    margin:
        Seconds kept in reserve for releasing leases and reporting.
    """

    deadline: float
    clock: Clock
    margin: float = 0.5
    _page_seconds: float = field(default=0.0)

    @classmethod
    def starting_now(cls, seconds: float, clock: Clock, margin: float = 0.5) -> Budget:
        return cls(deadline=clock.now() + seconds, clock=clock, margin=margin)

    def remaining(self) -> float:
        return self.deadline - self.clock.now()

    def record_page(self, seconds: float) -> None:
        """Remember how long a page took (the estimate decays slowly towards faster pages)."""
        self._page_seconds = max(seconds, self._page_seconds * 0.8)

    def allows_page(self) -> bool:
        return self.remaining() > self.margin + self._page_seconds

    def expired(self) -> bool:
        return self.remaining() <= self.margin
