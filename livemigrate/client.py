"""The small library applications use to follow the cutover flag.

>>> active = ActiveTable.from_control_table(dynamodb, "livemigrate-control", "orders-v2")
>>> active.active_table()                      # cached for ``ttl`` seconds
'orders'
>>> active.write(lambda table: dynamodb.put_item(TableName=table, Item=item))
>>> with active.writing() as table:            # the same, as a context manager
...     dynamodb.put_item(TableName=table, Item=item)

Reads use ``active_table()``: at most ``ttl`` seconds stale. Writes go through ``write`` /
``writing``, which honour the fenced mode of ``livemigrate cutover --fenced``: while the flag is
fenced (and the fence has not expired), a writer waits, polling the flag every ``poll`` seconds,
until the flag flips, then writes to the new active table. So no write lands in the old table
after the consumer has drained it. ``cutover --fenced`` waits longer than ``ttl`` after fencing
before it looks at the consumer, so a writer whose cached flag predates the fence has finished
deciding by then; keep ``ttl`` at or below the cutover's ``--client-ttl`` (default 1 s).

A fence that outlives ``fenced_until`` (a cutover that crashed) no longer holds writers: they
write to the table the flag still names, which is the old, still-current one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

from livemigrate.clock import Clock, SystemClock
from livemigrate.control import ControlStore
from livemigrate.flag import ControlFlagStore, Flag, FlagStore

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

T = TypeVar("T")


class FenceTimeout(Exception):
    """A writer waited longer than its ``max_wait`` for a fenced cutover to finish."""


class ActiveTable:
    """Which table to use, read from the flag store with a short cache.

    Parameters
    ----------
    store:
        A flag store (``ControlFlagStore`` or ``SsmFlagStore``).
    ttl:
        Seconds a read flag is trusted before it is read again.
    poll:
        Seconds between flag reads while a writer waits out a fence.
    max_wait:
        The longest a writer waits for a fence (beyond it: FenceTimeout).
    clock:
        Injectable time (tests).
    """

    def __init__(
        self,
        store: FlagStore,
        *,
        ttl: float = 1.0,
        poll: float = 0.05,
        max_wait: float = 60.0,
        clock: Clock | None = None,
    ) -> None:
        self.store = store
        self.ttl = ttl
        self.poll = poll
        self.max_wait = max_wait
        self.clock: Clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._flag: Flag | None = None
        self._read_at = float("-inf")
        self.reads = 0  # flag-store reads, for tests and metrics

    @classmethod
    def from_control_table(
        cls, dynamodb: DynamoDBClient, control_table: str, migration_id: str, ttl: float = 1.0
    ) -> ActiveTable:
        """The common case: the flag lives in the control table."""
        store = ControlStore(dynamodb, control_table, migration_id)
        return cls(ControlFlagStore(store), ttl=ttl)

    def flag(self, *, fresh: bool = False) -> Flag:
        """The flag, from cache unless it is older than ``ttl`` (or ``fresh``)."""
        now = self.clock.now()
        with self._lock:
            if fresh or self._flag is None or now - self._read_at >= self.ttl:
                self._flag = self.store.read()
                self._read_at = now
                self.reads += 1
            return self._flag

    def active_table(self) -> str:
        """The name of the table applications should use now (at most ``ttl`` stale)."""
        return self.flag().table

    def table_for_write(self) -> str:
        """The table to write to, after waiting out a fenced cutover if one is in progress."""
        flag = self.flag()
        started = self.clock.now()
        while flag.is_fenced(self.clock.now()):
            if self.clock.now() - started > self.max_wait:
                raise FenceTimeout(
                    f"waited {self.max_wait:.1f}s for the fenced cutover of {flag.table}"
                )
            self.clock.sleep(self.poll)
            flag = self.flag(fresh=True)
        return flag.table

    def write(self, fn: Callable[[str], T]) -> T:
        """Run ``fn(table)`` against the active table, honouring a fence; returns its result."""
        return fn(self.table_for_write())

    @contextmanager
    def writing(self) -> Iterator[str]:
        """``with active.writing() as table: ...``; the same rules as ``write``."""
        yield self.table_for_write()
