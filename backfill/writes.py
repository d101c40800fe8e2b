"""Writing one page: transform every item, put-if-absent every output, dead-letter failures.

Every put runs inside the worker's fence (``livemigrate.fencing``): once the worker's local
lease deadline has passed, or its lease was found lost, no write attempt leaves the process
(botocore's retries included) and the item counts as not written. While the page is written
the lease is kept alive (``UnitLease.keep_alive``) from the write threads and from the waiting
worker thread. No write is sent once the budget's time for writes is spent: the writer waits
for the writes in flight and reports the longest prefix of the page whose items are all
written or dead-lettered; the caller checkpoints exactly that prefix (rule 4), and the rest of
the page is read again by whoever continues.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from livemigrate import fencing
from livemigrate.destination import Outcome
from livemigrate.errors import LeaseLost, TransformOutputError
from livemigrate.fencing import Fence
from livemigrate.items import TypedItem, key_of, to_plain
from livemigrate.migration import Migration
from livemigrate.outage import is_transient
from livemigrate.ratelimit import PastDeadline, RateLimiter

TimeLeft = Callable[[], float]


class Holder(Protocol):
    """What the writer needs of the worker's lease (``backfill.lease.UnitLease``)."""

    fence: Fence

    @property
    def poll_seconds(self) -> float: ...

    def keep_alive(self) -> None: ...


@dataclass
class Tally:
    """Counts of one page (or a running total)."""

    read: int = 0
    written: int = 0
    superseded: int = 0
    dead: int = 0
    recopied: int = 0  # already held the backfill's own earlier copy (a page read again)

    def add(self, other: Tally) -> None:
        self.read += other.read
        self.written += other.written
        self.superseded += other.superseded
        self.dead += other.dead
        self.recopied += other.recopied


@dataclass
class Stats:
    """Process-wide totals for the progress display (thread-safe)."""

    total: Tally = field(default_factory=Tally)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, tally: Tally) -> None:
        with self._lock:
            self.total.add(tally)

    def snapshot(self) -> Tally:
        with self._lock:
            t = self.total
            return Tally(t.read, t.written, t.superseded, t.dead, t.recopied)


@dataclass
class PageResult:
    """What became of a page: the written prefix, and why the rest (if any) was not written.

    ``done`` items from the start of the page are all written or dead-lettered (``tally``
    counts them). When ``done`` is short of the page, ``lost`` is set if the lease was lost or
    its fence passed, ``failure`` if the endpoint failed transiently, and otherwise the budget
    ran out.
    """

    done: int
    tally: Tally
    lost: LeaseLost | None = None
    failure: BaseException | None = None


@dataclass
class _Item:
    tally: Tally | None  # None: not (completely) written
    error: BaseException | None = None


class PageWriter:
    """Transforms and writes items concurrently on a shared thread pool."""

    def __init__(self, migration: Migration, pool: ThreadPoolExecutor, limiter: RateLimiter):
        self.migration = migration
        self.pool = pool
        self.limiter = limiter
        self.source_keys = migration.source.key_names

    def write_page(
        self, items: Sequence[TypedItem], holder: Holder, time_left: TimeLeft
    ) -> PageResult:
        """Write a page under ``holder``'s fence while ``time_left()`` is positive.

        Returns once no write of the page is in flight any more.
        """
        futures = [self.pool.submit(self._item, raw, holder, time_left) for raw in items]
        self._wait(futures, holder)
        return prefix([f.result() for f in futures])

    @staticmethod
    def _wait(futures: list[Future[_Item]], holder: Holder) -> None:
        pending = set(futures)
        while pending:
            _, pending = wait(pending, timeout=holder.poll_seconds)
            if pending:
                _heartbeat(holder)

    def _item(self, raw: TypedItem, holder: Holder, time_left: TimeLeft) -> _Item:
        try:
            return _Item(self._one(raw, holder, time_left))
        except (LeaseLost, PastDeadline) as exc:
            return _Item(None, exc)
        except (ClientError, BotoCoreError) as exc:
            if not is_transient(exc):
                raise
            return _Item(None, exc)

    def _one(self, raw: TypedItem, holder: Holder, time_left: TimeLeft) -> Tally:
        plain = to_plain(raw)
        try:
            outputs = self.migration.transformer.run(plain)
        except TransformOutputError as exc:
            return self._dead(exc.reason, plain, raw)
        tally = Tally()
        for out in outputs:
            if time_left() <= 0:
                raise PastDeadline("the budget's time for writes is spent")
            # A lost lease needs no wait for the rate cap: refuse before taking tokens.
            holder.keep_alive()
            holder.fence.check()
            try:
                put = partial(self._put, out, holder, key_of(raw, self.source_keys))
                outcome = self.limiter.call(1, put, deadline=time_left)
            except ClientError as exc:
                if is_transient(exc):
                    raise  # an outage, or retries exhausted: the page is read again
                # The destination refused this one item (size, type): dead-letter it.
                reason = f"destination refused the item: {exc.response['Error'].get('Message')}"
                tally.add(self._dead(reason, plain, raw))
                continue
            if outcome is Outcome.SUPERSEDED:
                tally.superseded += 1
            elif outcome is Outcome.ALREADY_COPIED:
                tally.recopied += 1
            else:
                tally.written += 1
        return tally

    def _put(self, out: TypedItem, holder: Holder, source_key: TypedItem) -> Outcome:
        holder.keep_alive()
        with fencing.guarded(holder.fence):
            return self.migration.writer.put_if_absent(out, source_key)

    def _dead(self, reason: str, plain: dict[str, Any], raw: TypedItem) -> Tally:
        key = to_plain(key_of(raw, self.source_keys))
        self.migration.dead_letters.add("backfill", reason, plain, key)
        return Tally(dead=1)


def _heartbeat(holder: Holder) -> None:
    """Renew while waiting; a lost lease has revoked the fence, an outage shows in the writes."""
    try:
        holder.keep_alive()
    except LeaseLost:
        return
    except (ClientError, BotoCoreError) as exc:
        if not is_transient(exc):
            raise


def prefix(results: Sequence[_Item]) -> PageResult:
    """The longest fully written prefix, and the first reason found for the rest."""
    tally, done = Tally(), 0
    for result in results:
        if result.tally is None:
            break
        tally.add(result.tally)
        done += 1
    page = PageResult(done, tally)
    for result in results[done:]:
        if isinstance(result.error, LeaseLost):
            page.lost = page.lost or result.error
        elif result.error is not None and not isinstance(result.error, PastDeadline):
            page.failure = page.failure or result.error
    return page
