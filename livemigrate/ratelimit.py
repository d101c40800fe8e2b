"""Rate caps on reads and writes with adaptive backoff on throttling (ARCHITECTURE.md rule 8).

A ``RateLimiter`` is a token bucket in items per second that may go into debt: a caller takes
the items it is about to read or write and sleeps off any deficit, so one large page never
blocks forever behind a small bucket and the long-run rate still equals the cap. A cap of 0
means "no cap".

Throttling (``ProvisionedThroughputExceededException``, ``ThrottlingException`` ...) lowers the
effective rate multiplicatively and sleeps an exponential backoff with jitter; successes raise
it back additively (AIMD), so the tool settles just under what the table allows.

A caller with a deadline (a worker's budget) passes ``deadline``, a callable giving the seconds
it may still wait: a wait or a back-off that would end after it is not slept but refused with
``PastDeadline`` (the tokens are given back), so no cap makes a worker overrun its budget.

``RatesFromControl`` re-reads the caps from the control-table item ``RATES`` every few
seconds (also while a limiter waits), so an operator can change them while a run is going:
``livemigrate throttle --read-rate 200 --write-rate 100``, ``--pause``, ``--resume``. While
paused, every read and write waits (checking again every ``PAUSE_POLL`` seconds) until the item
says resume or the limiter's ``interrupt`` says stop (a backfill's budget ran out, Ctrl-C).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from botocore.exceptions import ClientError

from livemigrate.backoff import Backoff
from livemigrate.clock import Clock, SystemClock
from livemigrate.control import ControlStore
from livemigrate.keys import RATES

log = logging.getLogger(__name__)

T = TypeVar("T")

THROTTLE_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "Throttling",
        "TooManyRequestsException",
    }
)

Deadline = Callable[[], float]
"""Seconds the caller may still wait (0 or less: none)."""


class PastDeadline(Exception):
    """Waiting for the cap (or a throttling back-off) would pass the caller's deadline."""


def is_throttle(exc: ClientError) -> bool:
    """Whether a boto error is DynamoDB saying "slow down" (retry later, not a failure)."""
    return exc.response.get("Error", {}).get("Code") in THROTTLE_CODES


class RateLimiter:
    """A thread-safe token bucket in items/s with AIMD adaptation to throttling.

    Parameters
    ----------
    rate:
        Cap in items per second; 0 means uncapped (backoff on throttling still applies).
    clock:
        Time source (a FakeClock in tests).
    burst_seconds:
        How many seconds' worth of items may be taken at once after an idle period.
    """

    MIN_FACTOR = 0.05
    BACKOFF = Backoff(base=0.05, cap=5.0)
    PAUSE_POLL = 0.5

    def __init__(
        self, rate: float = 0.0, clock: Clock | None = None, burst_seconds: float = 1.0
    ) -> None:
        self.clock: Clock = clock or SystemClock()
        self.burst_seconds = burst_seconds
        self._lock = threading.Lock()
        self._rate = max(0.0, float(rate))
        self._factor = 1.0
        self._streak = 0
        self._tokens = self._capacity()
        self._stamp = self.clock.now()
        self.paused = False
        # Called before every acquire (RatesFromControl re-reads the caps through it), and
        # asked while paused whether to stop waiting.
        self.watch: Callable[[], object] | None = None
        self.interrupt: Callable[[], bool] | None = None

    @property
    def rate(self) -> float:
        """The configured cap (items/s, 0 = none)."""
        return self._rate

    @property
    def effective_rate(self) -> float:
        """The cap after throttling adaptation (0 = none)."""
        return self._rate * self._factor

    def set_rate(self, rate: float) -> None:
        """Change the cap while running."""
        with self._lock:
            self._refill()
            self._rate = max(0.0, float(rate))
            self._tokens = min(self._tokens, self._capacity())

    def _capacity(self) -> float:
        return max(1.0, self.effective_rate * self.burst_seconds)

    def _refill(self) -> None:
        now = self.clock.now()
        if self.effective_rate > 0:
            elapsed = max(0.0, now - self._stamp)
            self._tokens = min(self._capacity(), self._tokens + elapsed * self.effective_rate)
        self._stamp = now

    def reserve(self, items: int) -> float:
        """Take ``items`` tokens; the seconds the caller must wait before using them."""
        with self._lock:
            self._refill()
            rate = self.effective_rate
            if rate <= 0:
                return 0.0
            self._tokens -= items
            return 0.0 if self._tokens >= 0 else -self._tokens / rate

    def refund(self, items: int) -> None:
        """Give back tokens taken for work that was not done."""
        with self._lock:
            self._refill()
            self._tokens = min(self._capacity(), self._tokens + items)

    def acquire(self, items: int = 1, deadline: Deadline | None = None) -> float:
        """Wait out a pause, take ``items`` tokens and sleep off any debt; the seconds slept.

        Raises
        ------
        PastDeadline
            When the pause or the wait would end after ``deadline`` (nothing is taken then).
        """
        paused = self._while_paused(deadline)
        wait = self.reserve(items)
        if wait > 0 and deadline is not None and wait > deadline():
            self.refund(items)
            raise PastDeadline(f"waiting {wait:.2f}s for the rate cap would pass the deadline")
        if wait > 0:
            self.clock.sleep(wait)
        return paused + wait

    def _while_paused(self, deadline: Deadline | None = None) -> float:
        slept = 0.0
        while True:
            if self.watch is not None:
                self.watch()
            if not self.paused or (self.interrupt is not None and self.interrupt()):
                return slept
            if deadline is not None and deadline() <= self.PAUSE_POLL:
                raise PastDeadline("the backfill is paused (livemigrate throttle) past its budget")
            self.clock.sleep(self.PAUSE_POLL)
            slept += self.PAUSE_POLL

    def throttled(self) -> float:
        """Record a throttle: lower the rate and return the backoff to sleep (with jitter)."""
        with self._lock:
            self._refill()
            self._factor = max(self.MIN_FACTOR, self._factor * 0.5)
            self._streak += 1
            streak = self._streak
        return self.BACKOFF.delay(streak)

    def succeeded(self) -> None:
        """Record a success: recover the rate step by step after throttling."""
        with self._lock:
            self._streak = 0
            if self._factor < 1.0:
                self._factor = min(1.0, self._factor + 0.02)

    def call(
        self,
        items: int,
        fn: Callable[[], T],
        max_attempts: int = 12,
        deadline: Deadline | None = None,
    ) -> T:
        """Run ``fn`` under the cap, retrying throttling errors with adaptive backoff.

        With ``deadline``, neither the wait for the cap nor a back-off sleeps past it
        (``PastDeadline``).
        """
        self.acquire(items, deadline)
        for attempt in range(1, max_attempts + 1):
            try:
                result = fn()
            except ClientError as exc:
                if not is_throttle(exc) or attempt == max_attempts:
                    raise
                pause = self.throttled()
                if deadline is not None and pause > deadline():
                    raise PastDeadline("a throttling back-off would pass the deadline") from exc
                log.info("throttled (%s); backing off %.2fs", exc.response["Error"]["Code"], pause)
                self.clock.sleep(pause)
                continue
            self.succeeded()
            return result
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


class RatesFromControl:
    """Keeps the read/write limiters in line with the control-table item ``RATES``.

    The item is optional: without it (or without a field) the configured defaults hold.
    """

    def __init__(
        self,
        store: ControlStore,
        read: RateLimiter,
        write: RateLimiter,
        clock: Clock | None = None,
        every_seconds: float = 5.0,
    ) -> None:
        self.store = store
        self.read = read
        self.write = write
        self.clock: Clock = clock or SystemClock()
        self.every = every_seconds
        self._defaults = (read.rate, write.rate)
        self._next = 0.0
        self._lock = threading.Lock()
        read.watch = write.watch = self.maybe_refresh

    def maybe_refresh(self) -> bool:
        """Re-read the caps if the interval has passed; True when a read happened."""
        now = self.clock.now()
        with self._lock:
            if now < self._next:
                return False
            self._next = now + self.every
        item = self.store.get(RATES) or {}
        read = float(item.get("read_rate", self._defaults[0]))
        write = float(item.get("write_rate", self._defaults[1]))
        paused = bool(item.get("paused", False))
        if paused != self.read.paused:
            log.warning("reads and writes %s (RATES item)", "PAUSED" if paused else "resumed")
        self.read.paused = self.write.paused = paused
        if (read, write) != (self.read.rate, self.write.rate):
            log.info("rate caps now read=%s write=%s items/s (0 = no cap)", read, write)
            self.read.set_rate(read)
            self.write.set_rate(write)
        return True
