"""Workers: claim a segment or split, read pages, write them, checkpoint, repeat within a budget.

Any number of workers (threads here, processes or machines elsewhere) share the plan in the
control table. A unit of work is claimed with one conditional write (free, expired or ours);
after every page its checkpoint and counters are saved together with the lease renewal, so a
worker killed at any moment costs at most the page it had in flight. When the budget runs out
the worker releases its lease and stops; another worker or run continues from the checkpoint.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from backfill import plan
from backfill.budget import Budget
from backfill.hotkey import HotKeyDetector, attr_id, attr_less, named_key
from backfill.keys import dump_key, load_json, load_key
from backfill.reader import Page, RangeReader, SegmentReader, last_sort_key
from backfill.splits import create_splits, unfinished_jumps
from backfill.writes import PageWriter, Stats, Tally
from livemigrate.clock import Clock, SystemClock
from livemigrate.errors import LeaseLost
from livemigrate.migration import Migration
from livemigrate.ratelimit import RateLimiter, RatesFromControl

log = logging.getLogger(__name__)

COUNTERS = ("items_read", "items_written", "superseded", "dead_lettered")

Hook = Callable[[Page, dict[str, Any]], tuple[dict[str, Any], dict[str, Any], int]]


@dataclass(frozen=True)
class Options:
    """How a backfill process works (see ``livemigrate backfill --help``)."""

    workers: int = 4
    budget_seconds: float = 840.0
    lease_seconds: float = 30.0
    page_size: int = 1000
    write_threads: int = 8
    total_segments: int | None = None
    hot_keys: tuple[str, ...] = ()
    hot_pages: int = 3
    hot_share: float = 0.9
    hot_min_items: int = 2000
    split_ways: int = 0  # 0: twice the worker count, at least 4
    idle_poll_seconds: float = 0.5
    margin_seconds: float = 0.5
    rates_every_seconds: float = 5.0

    @property
    def ways(self) -> int:
        return self.split_ways or max(4, 2 * self.workers)


def owner_prefix() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Engine:
    """One process's workers, sharing a write pool, rate limiters and a budget."""

    def __init__(
        self,
        migration: Migration,
        options: Options,
        clock: Clock | None = None,
        stats: Stats | None = None,
    ) -> None:
        self.migration = migration
        self.options = options
        self.clock: Clock = clock or SystemClock()
        self.stats = stats or Stats()
        self.store = migration.store
        settings = migration.settings
        self.read_limiter = RateLimiter(settings.read_rate, self.clock)
        self.write_limiter = RateLimiter(settings.write_rate, self.clock)
        self.rates = RatesFromControl(
            self.store,
            self.read_limiter,
            self.write_limiter,
            self.clock,
            options.rates_every_seconds,
        )
        hash_type = migration.source.key_types[migration.source.hash_key]
        self.named = frozenset(attr_id(named_key(k, hash_type)) for k in options.hot_keys)
        self.budget = Budget.starting_now(
            options.budget_seconds, self.clock, options.margin_seconds
        )
        self.total_segments = 0
        self._running_marked = False
        self._errors: list[BaseException] = []

    def plan(self) -> int:
        """Write the plan if none exists; returns its TotalSegments."""
        source = self.migration.source
        wanted = self.options.total_segments or plan.choose_total_segments(
            source.item_count, source.size_bytes, self.options.workers
        )
        self.total_segments = plan.ensure_plan(self.store, wanted)
        return self.total_segments

    def run(self, budget_seconds: float | None = None) -> bool:
        """Run the workers until the plan is complete or the budget is spent.

        The budget (``options.budget_seconds`` unless given) starts now, after preflight and
        planning. Returns True when the whole table is copied (PLAN state complete).
        """
        if not self.total_segments:
            self.plan()
        self.budget = Budget.starting_now(
            budget_seconds or self.options.budget_seconds, self.clock, self.options.margin_seconds
        )
        threads = self.options.workers * self.options.write_threads
        with ThreadPoolExecutor(threads, thread_name_prefix="backfill-write") as pool:
            writer = PageWriter(self.migration, pool, self.write_limiter)
            prefix = owner_prefix()
            workers = [
                threading.Thread(
                    target=self._guarded,
                    args=(Worker(self, f"{prefix}-{i}", writer), random.uniform(0, 0.05 * i)),
                )
                for i in range(self.options.workers)
            ]
            for t in workers:
                t.start()
            for t in workers:
                t.join()
        if self._errors:
            raise self._errors[0]
        return plan.plan_state(self.store) == plan.COMPLETE

    def _guarded(self, worker: Worker, stagger: float) -> None:
        try:
            worker.run(stagger)
        except BaseException as exc:  # re-raised by run() in the calling thread
            log.exception("backfill worker %s failed", worker.owner)
            self._errors.append(exc)

    def claimed(self) -> None:
        if not self._running_marked:
            self._running_marked = True
            plan.mark_running(self.store)


class Worker:
    """Claims units one at a time and drains each within the process budget."""

    def __init__(self, engine: Engine, owner: str, writer: PageWriter) -> None:
        self.engine = engine
        self.owner = owner
        self.writer = writer
        self.store = engine.store
        self.options = engine.options
        self.clock = engine.clock
        self.source = engine.migration.source
        self.client = engine.migration.clients.dynamodb
        self._pending: dict[str, int] = {}  # METRICS not yet added (sent with the next read)

    def run(self, stagger: float = 0.0) -> None:
        # Workers started together would all race for the same first units.
        self.clock.sleep(stagger)
        while not self.engine.budget.expired() and not self.engine._errors:
            self.engine.rates.maybe_refresh()
            unit = self._claim()
            if unit is not None:
                self._work(unit)
                continue
            if plan.mark_complete(self.store):
                return
            # Others hold the remaining leases: wait for one to finish or expire.
            wait = min(self.options.idle_poll_seconds, self.engine.budget.remaining())
            self.clock.sleep(max(0.0, wait))

    def _claim(self) -> plan.Unit | None:
        now = self.clock.now()
        splits = [u for u in plan.units(self.store, plan.SPLIT_PREFIX) if self._free(u, now)]
        segments = [u for u in plan.units(self.store, plan.SEG_PREFIX) if self._free(u, now)]
        # Splits first: they are the long pole. Shuffled so workers spread over the table.
        random.shuffle(splits)
        random.shuffle(segments)
        for unit in splits + segments:
            item = self.store.claim(
                unit.sk,
                self.owner,
                ttl_seconds=self.options.lease_seconds,
                now=now,
                require_state=plan.PENDING,
            )
            if item is not None and self._still_mine(unit.sk):
                self.engine.claimed()
                return plan.Unit(unit.sk, item)
        return None

    def _still_mine(self, sk: str) -> bool:
        # DynamoDB applies a conditional write atomically; moto's server does not under
        # concurrent requests (two claims can both pass). Reading back catches most of those
        # races at the price of one read per claim; renewals catch the rest (LeaseLost).
        held = self.store.get(sk) or {}
        return held.get("lease_owner") == self.owner

    def _free(self, unit: plan.Unit, now: float) -> bool:
        item = unit.item
        held = item.get("lease_owner") not in (None, self.owner)
        return not unit.done and not (held and float(item.get("lease_expires", 0)) >= now)

    def _work(self, unit: plan.Unit) -> None:
        if unit.is_split:
            self._work_split(unit)
        else:
            self._work_segment(unit)

    # -- segments ---------------------------------------------------------------------------
    def _work_segment(self, unit: plan.Unit) -> None:
        reader = SegmentReader(
            self.client,
            self.source.name,
            unit.segment,
            self.engine.total_segments,
            self.options.page_size,
            self.engine.read_limiter,
        )
        skipped = {str(k) for k in unit.item.get("hot_keys_skipped") or []}
        start = load_key(unit.item.get("checkpoint"))
        try:
            start = self._finish_jumps(unit, skipped, start)
        except LeaseLost:
            return
        detector = HotKeyDetector(
            self.options.hot_pages,
            self.options.hot_share,
            self.engine.named,
            skipped,
            self.options.hot_min_items,
        )
        detector.restore(unit.item)
        hook = self._detect_hook(unit, detector) if self.source.range_key else None
        self._drain(unit, reader.page, start, hook)

    def _finish_jumps(
        self, unit: plan.Unit, skipped: set[str], start: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        # Only the last split of a crashed owner can be unfinished; applying it is idempotent.
        for jump in unfinished_jumps(self.store, unit.segment, skipped):
            assert self.source.range_key is not None
            start = jump.key(self.source.hash_key, self.source.range_key)
            skipped.add(attr_id(jump.hot))
            self.store.renew(
                unit.sk,
                self.owner,
                self.options.lease_seconds,
                now=self.clock.now(),
                set_values={"checkpoint": dump_key(start), "hot_keys_skipped": sorted(skipped)},
            )
        return start

    def _detect_hook(self, unit: plan.Unit, detector: HotKeyDetector) -> Hook:
        hash_name, range_name = self.source.hash_key, self.source.range_key
        assert range_name is not None

        def after_page(
            page: Page, last: dict[str, Any]
        ) -> tuple[dict[str, Any], dict[str, Any], int]:
            hot = detector.observe([it[hash_name] for it in page.items], last[hash_name])
            if hot is None:
                return last, detector.state(), 0
            upper = last_sort_key(
                self.client,
                self.source.name,
                hash_name=hash_name,
                range_name=range_name,
                hash_value=hot,
                limiter=self.engine.read_limiter,
            )
            if upper is None or not attr_less(last[range_name], upper):
                return last, detector.state(), 1
            jump = create_splits(
                self.store,
                unit.segment,
                hot,
                lower=last[range_name],
                upper=upper,
                ways=self.options.ways,
            )
            log.info("segment %s: hot key %s split; scan jumps past it", unit.sk, hot)
            extra = {**detector.state(), "hot_keys_skipped": sorted(detector.skipped)}
            return jump.key(hash_name, range_name), extra, 1

        return after_page

    # -- splits -----------------------------------------------------------------------------
    def _work_split(self, unit: plan.Unit) -> None:
        hash_name, range_name = self.source.hash_key, self.source.range_key
        assert range_name is not None
        hot = load_json(str(unit.item["hot_key_id"]))
        reader = RangeReader(
            self.client,
            self.source.name,
            hash_name,
            range_name,
            hot,
            load_json(str(unit.item["upper"])),
            self.options.page_size,
            self.engine.read_limiter,
        )
        start = load_key(unit.item.get("checkpoint")) or {
            hash_name: hot,
            range_name: load_json(str(unit.item["lower"])),
        }
        self._drain(unit, reader.page, start, None)

    # -- the page loop ----------------------------------------------------------------------
    def _drain(
        self,
        unit: plan.Unit,
        read: Callable[[Any], Page],
        start: dict[str, Any] | None,
        hook: Hook | None,
    ) -> None:
        counters = {k: int(unit.item.get(k, 0)) for k in COUNTERS}
        while True:
            if not self.engine.budget.allows_page():
                self._flush_metrics({})
                self.store.release(unit.sk, self.owner)
                return
            began = self.clock.now()
            page = read(start)
            # Reads are counted as soon as they happen (a page re-read after a crash counts
            # twice); the previous page's write counters ride along in the same update.
            self._flush_metrics({"items_read": len(page.items)})
            tally = self.writer.write_page(page.items)
            tally.read = len(page.items)
            following: dict[str, Any] | None = page.last_key
            extra: dict[str, Any] = {}
            if hook is not None and following is not None:
                following, extra, extra_reads = hook(page, following)
                tally.read += extra_reads
                self._pending["items_read"] = extra_reads
            if not self._checkpoint(unit, counters, tally, following, extra):
                return
            self.engine.budget.record_page(self.clock.now() - began)
            if following is None:
                self._flush_metrics({})
                self.store.release(unit.sk, self.owner)
                return
            start = following

    def _checkpoint(
        self,
        unit: plan.Unit,
        counters: dict[str, int],
        tally: Tally,
        following: dict[str, Any] | None,
        extra: dict[str, Any],
    ) -> bool:
        """Save the position after the page is written; False if the lease was lost."""
        for name, n in zip(
            COUNTERS, (tally.read, tally.written, tally.superseded, tally.dead), strict=True
        ):
            counters[name] += n
        values: dict[str, Any] = {"checkpoint": dump_key(following), **counters, **extra}
        if following is None:
            values["state"] = plan.DONE
        try:
            self.store.renew(
                unit.sk, self.owner, self.options.lease_seconds, self.clock.now(), values
            )
        except LeaseLost:
            log.warning("%s: lease on %s was taken over; leaving it", self.owner, unit.sk)
            return False
        self.engine.stats.add(tally)
        for name, n in (
            ("items_written", tally.written),
            ("superseded_by_live_write", tally.superseded),
            ("dead_letters", tally.dead),
        ):
            self._pending[name] = self._pending.get(name, 0) + n
        return True

    def _flush_metrics(self, counts: dict[str, int]) -> None:
        for name, n in self._pending.items():
            counts[name] = counts.get(name, 0) + n
        self._pending = {}
        self.store.add_metrics(counts)
