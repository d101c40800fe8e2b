"""Writing one page: transform every item, put-if-absent every output, dead-letter failures.

The page's checkpoint is saved by the caller only after ``write_page`` returns, i.e. after
every item of the page is durably written or dead-lettered (rule 4).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from botocore.exceptions import ClientError

from livemigrate.destination import Outcome
from livemigrate.errors import TransformOutputError
from livemigrate.items import TypedItem, key_of, to_plain
from livemigrate.migration import Migration
from livemigrate.ratelimit import RateLimiter, is_throttle


@dataclass
class Tally:
    """Counts of one page (or a running total)."""

    read: int = 0
    written: int = 0
    superseded: int = 0
    dead: int = 0

    def add(self, other: Tally) -> None:
        self.read += other.read
        self.written += other.written
        self.superseded += other.superseded
        self.dead += other.dead


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
            return Tally(t.read, t.written, t.superseded, t.dead)


class PageWriter:
    """Transforms and writes items concurrently on a shared thread pool."""

    def __init__(self, migration: Migration, pool: ThreadPoolExecutor, limiter: RateLimiter):
        self.migration = migration
        self.pool = pool
        self.limiter = limiter
        self.source_keys = migration.source.key_names

    def write_page(self, items: Sequence[TypedItem]) -> Tally:
        """Write a page; returns its counts once every item is written or dead-lettered."""
        tally = Tally()
        for part in self.pool.map(self._one, items):
            tally.add(part)
        return tally

    def _one(self, raw: TypedItem) -> Tally:
        plain = to_plain(raw)
        try:
            outputs = self.migration.transformer.run(plain)
        except TransformOutputError as exc:
            return self._dead(exc.reason, plain, raw)
        tally = Tally()
        for out in outputs:
            try:
                write = partial(
                    self.migration.writer.put_if_absent, out, key_of(raw, self.source_keys)
                )
                outcome = self.limiter.call(1, write)
            except ClientError as exc:
                if is_throttle(exc):
                    raise  # retries exhausted: fail the page, the checkpoint stays behind it
                # The destination refused this one item (size, type): dead-letter it.
                reason = f"destination refused the item: {exc.response['Error'].get('Message')}"
                tally.add(self._dead(reason, plain, raw))
                continue
            if outcome is Outcome.SUPERSEDED:
                tally.superseded += 1
            else:
                tally.written += 1
        return tally

    def _dead(self, reason: str, plain: dict[str, Any], raw: TypedItem) -> Tally:
        key = to_plain(key_of(raw, self.source_keys))
        self.migration.dead_letters.add("backfill", reason, plain, key)
        return Tally(dead=1)
