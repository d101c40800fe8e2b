"""Time fences for lease holders (ARCHITECTURE.md rule 11).

A lease in the control table says "mine until ``lease_expires``" in wall-clock time, and any
other process may take it over once that time has passed on *its* clock. So a holder must stop
writing before then, whatever happens to it: a page that takes longer than the lease, botocore
retrying a write for half a minute, a GC or VM pause. A ``Fence`` is the holder's local
deadline, kept on a monotonic clock: the lease's length minus a margin, counted from the moment
the claim or renewal *was sent* (so the deadline is never later than the lease, whatever the
round trip took). The margin covers the skew between machines' clocks and the time a write
already sent needs to land.

Writes are fenced where they leave the process: ``install(client)`` registers a botocore
``before-send`` hook on a DynamoDB client, and every write attempt (each retry included) made
by a thread inside ``guarded(fence)`` is refused with ``LeaseExpired`` once the fence has
passed. The engines wrap their destination writes in ``guarded``; control-table writes are
conditional on the lease already and are not fenced.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from livemigrate.clock import Clock
from livemigrate.errors import LeaseLost

WRITE_OPERATIONS = ("PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems")


class LeaseExpired(LeaseLost):
    """A fenced write was refused: the holder's local deadline has passed."""


class Fence:
    """A local deadline on a monotonic clock; writes guarded by it are refused after it.

    Parameters
    ----------
    clock:
        Its ``monotonic()`` is the time base.
    deadline:
        Monotonic time after which nothing guarded may be sent.
    what:
        What is fenced, for messages (``lease SEG#000003``).
    """

    def __init__(self, clock: Clock, deadline: float, what: str) -> None:
        self.clock = clock
        self.what = what
        self._deadline = deadline
        self._lock = threading.Lock()

    @classmethod
    def for_lease(cls, clock: Clock, sent_at: float, ttl: float, margin: float, what: str) -> Fence:
        """The fence of a lease claimed (or renewed) by a request sent at monotonic ``sent_at``."""
        return cls(clock, sent_at + ttl - margin, what)

    @property
    def deadline(self) -> float:
        with self._lock:
            return self._deadline

    def extend(self, sent_at: float, ttl: float, margin: float) -> None:
        """A renewal sent at ``sent_at`` succeeded: the deadline moves (never backwards)."""
        with self._lock:
            self._deadline = max(self._deadline, sent_at + ttl - margin)

    def revoke(self) -> None:
        """The lease is gone (lost or released): refuse every further write at once."""
        with self._lock:
            self._deadline = float("-inf")

    def remaining(self) -> float:
        return self.deadline - self.clock.monotonic()

    def expired(self) -> bool:
        return self.remaining() <= 0

    def check(self) -> None:
        """Raise ``LeaseExpired`` if the deadline has passed."""
        left = self.remaining()
        if left <= 0:
            raise LeaseExpired(f"{self.what}: local lease deadline passed {-left:.3f}s ago")


class WindowClosed(Exception):
    """A write was sent under a decision that is too old to be trusted: decide again, retry.

    Not a lost lease: the holder still holds its lease; only the decision (tombstone or real
    delete, marked or unmarked delete) must be taken again from fresher state.
    """


class Window(Fence):
    """The fence of a decision rather than of a lease: past its deadline a write attempt
    raises ``WindowClosed`` (the batch is applied again with a fresh decision)."""

    def check(self) -> None:
        left = self.remaining()
        if left <= 0:
            raise WindowClosed(f"{self.what}: decision expired {-left:.3f}s ago")


_local = threading.local()


@contextmanager
def guarded(fence: Fence | None) -> Iterator[None]:
    """Within the block, this thread's writes through an installed client check ``fence``
    (and every fence of the blocks it is nested in)."""
    previous: tuple[Fence, ...] = getattr(_local, "fences", ())
    _local.fences = previous if fence is None else (*previous, fence)
    try:
        yield
    finally:
        _local.fences = previous


def current() -> Fence | None:
    """The innermost fence guarding this thread's writes, if any."""
    fences: tuple[Fence, ...] = getattr(_local, "fences", ())
    return fences[-1] if fences else None


def active() -> tuple[Fence, ...]:
    """Every fence guarding this thread's writes (a write checks each of them)."""
    fences: tuple[Fence, ...] = getattr(_local, "fences", ())
    return fences


_installed: weakref.WeakSet[Any] = weakref.WeakSet()
_install_lock = threading.Lock()


_WRITE_EVENTS = frozenset(f"before-send.dynamodb.{operation}" for operation in WRITE_OPERATIONS)


def install(client: Any) -> None:
    """Make every write attempt of a DynamoDB ``client`` (retries too) check the thread's fence.

    The check is the last ``before-send`` handler, registered on the generic event: botocore
    calls the handlers of ``before-send.dynamodb.PutItem`` before those of ``before-send``, and
    the adaptive retry mode waits for its client-side rate limit in a ``before-send`` handler.
    A check made before that wait would let a write leave after the deadline (issue 19).
    """
    with _install_lock:
        if client in _installed:
            return
        client.meta.events.register_last("before-send", _check_fence)
        _installed.add(client)


def _check_fence(event_name: str = "", **_: Any) -> None:
    if event_name not in _WRITE_EVENTS:
        return
    for fence in active():
        fence.check()
