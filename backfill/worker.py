"""Workers: claim a segment or split, read pages, write them, checkpoint, repeat within a budget.

Any number of workers (threads here, processes or machines elsewhere) share the plan in the
control table. A unit of work is claimed with one conditional write (free, expired or ours);
after every page its checkpoint and counters are saved together with the lease renewal, so a
worker killed at any moment costs at most the page it had in flight. When the budget runs out
the worker checkpoints what it wrote, releases its lease and stops; another worker or run
continues from the checkpoint.

Leases are fenced (``backfill.lease``): the worker's writes stop before its lease could be
taken over, it renews the lease while a page is written, and a stale worker's checkpoints and
splits are refused. Endpoint outages are ridden out (``backfill.health``).
"""

from __future__ import annotations

import enum
import logging
import os
import random
import socket
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, TypeVar

from backfill import plan
from backfill.budget import Budget
from backfill.health import AWS_ERRORS, Health, Interrupted
from backfill.hotkey import HotKeyDetector, attr_id, attr_less, named_key
from backfill.keys import dump_key, load_json, load_key
from backfill.lease import UnitLease
from backfill.plan import Leases, Planned, Unit
from backfill.reader import Page, RangeReader, SegmentReader, last_sort_key
from backfill.splits import create_splits, unfinished_jumps
from backfill.writes import PageResult, PageWriter, Stats, Tally
from livemigrate import fencing
from livemigrate.clock import Clock, Every, SystemClock
from livemigrate.counters import UNIT_COUNTERS, UNIT_FIELDS, Counter
from livemigrate.errors import LeaseLost
from livemigrate.items import key_of
from livemigrate.migration import Migration
from livemigrate.outage import is_transient
from livemigrate.ratelimit import PastDeadline, RateLimiter, RatesFromControl

log = logging.getLogger(__name__)

# The unit item's counter attributes, in the order of ``_checkpoint``'s tally fields.
COUNTERS = tuple(UNIT_FIELDS[name] for name in UNIT_COUNTERS)
# METRICS counter: items of pages cut by the budget, read again by the next run.
CUT_BY_BUDGET: Counter = "items_reread_after_budget"
# How often a unit's checkpoint also carries the request units spent (accounting); the run's
# last counter update carries the rest. Each is a clause more of the update (issue 18).
COSTS_EVERY_SECONDS = 10.0
# How often the main thread wakes while the workers run (see ``_join``).
JOIN_WAKE_SECONDS = 0.2

T = TypeVar("T")

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
    planned_workers: int | None = None  # the run's workers in every process (None: workers)
    hot_keys: tuple[str, ...] = ()
    hot_pages: int = 3
    hot_share: float = 0.9
    hot_min_items: int = 2000
    split_ways: int = 0  # 0: twice the worker count, at least 4
    idle_poll_seconds: float = 0.5
    margin_seconds: float = 0.5
    rates_every_seconds: float = 5.0
    lease_margin_seconds: float | None = None  # None: a third of lease_seconds
    outage_seconds: float = 300.0

    def __post_init__(self) -> None:
        if not 0 <= self.lease_margin < self.lease_seconds:
            raise ValueError(
                f"lease margin {self.lease_margin}s must be under the lease ({self.lease_seconds}s)"
            )

    @property
    def ways(self) -> int:
        return self.split_ways or max(4, 2 * self.workers)

    @property
    def lease_margin(self) -> float:
        """How long before its lease expires a worker stops writing (clock skew between
        machines, a write already sent); also added to ``quiet_at``."""
        if self.lease_margin_seconds is not None:
            return self.lease_margin_seconds
        return self.lease_seconds / 3


def owner_prefix() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Left(enum.Enum):
    """What a process knows is left of the plan without listing it (``Engine.left_here``)."""

    UNKNOWN = "unknown"
    SIBLINGS = "siblings"
    FINISHED = "finished"


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
        self.health = Health(self.store, self.clock, options.outage_seconds)
        hash_type = migration.source.key_types[migration.source.hash_key]
        self.named = frozenset(attr_id(named_key(k, hash_type)) for k in options.hot_keys)
        self.budget = Budget.starting_now(
            options.budget_seconds, self.clock, options.margin_seconds
        )
        self.total_segments = 0
        self._stopped = False
        self._errors: list[BaseException] = []
        self._changes = threading.Condition()
        self._complete = False  # nothing is left for this process to do
        self.plan_completed = False  # a worker of this process saw the plan complete
        self._listed_at = float("-inf")  # monotonic time of this process's last unit listing
        self._view: list[Unit] = []  # that listing, while claims from it may succeed
        self._last_listing: list[Unit] = []  # that listing
        self._listing = threading.Lock()  # one listing at a time
        self._listings_begun = 0
        self._taken: set[str] = set()  # units claimed (or being claimed) by this process
        self._finished_here: set[str] = set()  # units this process's workers finished
        self._added = 0  # how many times this process's workers made new units (splits)
        self._listing_added = -1  # that count when the last listing (or plan) began
        self._completing = threading.Lock()  # one completion of the plan at a time
        self._nothing_left = False  # a completion here found nothing left to do
        self._owners = owner_prefix()  # the next (then this) run's workers are "<prefix>-<n>"
        self._plan_state = plan.PLANNED  # as the plan was found or created by this process
        # Units the plan was created with, claimed for this process's workers (by owner),
        # with the monotonic time the claim was sent (their fences count from it).
        self._preclaimed: dict[str, tuple[Unit, float]] = {}
        self._claims_sent = 0.0
        self._costs_every = Every(COSTS_EVERY_SECONDS, self.clock)
        self._left_over: dict[Counter, int] = {}  # counters for the run's last update
        # Every write attempt through this client checks the fence of the thread sending it.
        fencing.install(migration.clients.dynamodb)

    def plan(self, claim: bool = False) -> int:
        """Write the plan if none exists; returns its TotalSegments. ``claim``: this process
        runs the plan next, alone (``plan.Leases``)."""
        source = self.migration.source
        workers = self.options.planned_workers or self.options.workers
        wanted = self.options.total_segments or plan.choose_total_segments(
            source.item_count, source.size_bytes, workers
        )
        return self.adopt(
            self.health.call(lambda: plan.ensure_plan(self.store, wanted, self.leases(claim)))
        )

    def leases(self, claim: bool) -> Leases | None:
        """The claims a plan written now is created with (and when they are sent)."""
        if not claim:
            return None
        self._claims_sent = self.clock.monotonic()
        owners = [f"{self._owners}-{n}" for n in range(self.options.workers)]
        return Leases(owners, self.options.lease_seconds, self.clock.now())

    def adopt(self, planned: Planned) -> int:
        """Take the plan's TotalSegments. Units this process just created are its first view
        of them: its workers claim them without listing them first, or start on the ones
        created claimed for them (issue 18)."""
        self.total_segments = planned.total_segments
        self._plan_state = str(planned.plan.get("state", plan.PLANNED))
        if planned.created is not None:
            with self._changes:
                self._view = self._last_listing = list(planned.created)
                self._listing_added = self._added
                for unit in planned.created:
                    owner = unit.item.get("lease_owner")
                    if owner is not None:
                        self._preclaimed[str(owner)] = (unit, self._claims_sent)
                        self._taken.add(unit.sk)
        return self.total_segments

    def holds_for(self, owner: str) -> bool:
        """Whether the plan was created with a unit claimed for ``owner``, not yet taken up."""
        with self._changes:
            return owner in self._preclaimed

    def preclaimed(self, owner: str) -> tuple[Unit, float] | None:
        """The unit the plan was created with for ``owner`` (once), and when its claim was
        sent."""
        with self._changes:
            return self._preclaimed.pop(owner, None)

    def run(self, budget_seconds: float | None = None) -> bool:
        """Run the workers until the plan is complete or the budget is spent.

        The budget (``options.budget_seconds`` unless given) starts now, after preflight and
        planning. Returns True when the whole table is copied (PLAN state complete).

        Raises
        ------
        ServiceUnreachable
            The endpoint failed for longer than ``options.outage_seconds`` (positions saved).
        """
        if not self.total_segments:
            self.plan(claim=True)
        self.budget = Budget.starting_now(
            budget_seconds or self.options.budget_seconds, self.clock, self.options.margin_seconds
        )
        if self._stopped:  # a stop that came before this budget existed
            self.budget.end_now()
        # Before the workers start, off their path to the first page (a planned plan only:
        # one found running, or created running, is not marked again).
        if self._plan_state == plan.PLANNED:
            self.health.call(lambda: plan.mark_running(self.store))
            self._plan_state = plan.RUNNING
        threads = self.options.workers * self.options.write_threads
        with ThreadPoolExecutor(threads, thread_name_prefix="backfill-write") as pool:
            writer = PageWriter(self.migration, pool, self.write_limiter)
            # The owners the plan may have been created with (see ``leases``).
            prefix = self._owners
            workers = [
                threading.Thread(
                    target=self._guarded,
                    args=(self.new_worker(f"{prefix}-{i}", writer), random.uniform(0, 0.05 * i)),
                )
                for i in range(self.options.workers)
            ]
            for t in workers:
                t.start()
            for t in workers:
                _join(t)
        self._owners = owner_prefix()  # a later run's workers are new ones
        self._release_unused()
        # One update for the counters left to the run (items of pages cut by the budget) and
        # the request units no checkpoint carried (claims, completion): not one per worker.
        with self._changes:
            counts, self._left_over = self._left_over, {}
        if self._errors:
            self._add_quietly(counts)
            raise self._errors[0]
        self.health.call(lambda: self.store.add_metrics(counts))
        if self.plan_completed:  # no need to read it again
            return True
        return self.health.call(lambda: plan.plan_state(self.store)) == plan.COMPLETE

    def _release_unused(self) -> None:
        """Free the units created claimed for workers that never took them up (the run
        ended first: a stop, a spent budget), instead of a lease later."""
        with self._changes:
            unused, self._preclaimed = self._preclaimed, {}
            self._taken.difference_update(unit.sk for unit, _ in unused.values())
        for owner, (unit, _) in unused.items():
            try:
                self.store.release(unit.sk, owner)
            except AWS_ERRORS:
                log.warning("could not release %s; it is free once its lease expires", unit.sk)

    def _add_quietly(self, counts: dict[Counter, int]) -> None:
        """A failed run's last counters: one try, as the run's own error is what is raised."""
        try:
            self.store.add_metrics(counts)
        except Exception:
            log.warning("could not save the last counters of a failed run", exc_info=True)

    def hand_over(self, counts: dict[Counter, int]) -> None:
        """Counters for the run's last update (a worker's checkpoints carry only its unit's)."""
        with self._changes:
            for name, n in counts.items():
                self._left_over[name] = self._left_over.get(name, 0) + n

    def costs_due(self) -> bool:
        """Whether this checkpoint carries the request units (once per
        ``COSTS_EVERY_SECONDS`` for the whole process: status lags by at most that)."""
        return self._costs_every.due()

    def stop(self) -> None:
        """End the run now, or the next one as soon as it starts: each worker finishes its
        page, checkpoints and releases its lease. A signal can come before ``run`` starts its
        budget (a child process still planning); ending only the budget of the moment let such
        a run go on to its full budget."""
        self._stopped = True
        self.budget.end_now()

    def new_worker(self, owner: str, writer: PageWriter) -> Worker:
        """One worker of this engine (the export backfill's engine makes its own kind)."""
        return Worker(self, owner, writer)

    def _guarded(self, worker: Worker, stagger: float) -> None:
        try:
            worker.run(stagger)
        except BaseException as exc:  # re-raised by run() in the calling thread
            log.exception("backfill worker %s failed", worker.owner)
            self._errors.append(exc)
            self.changed()  # idle siblings stop too

    def idle(self, seconds: float) -> bool:
        """An idle worker's wait: ``seconds``, or until a sibling leaves a unit unfinished,
        sees more units free than it takes, or completes the plan. True when woken so.

        Without the wake-up, a run's last unit left every other worker asleep for up to
        ``idle_poll_seconds`` after the plan completed (a few % of a short run, issue 18).
        """
        if not isinstance(self.clock, SystemClock):  # simulated time: no real waiting
            self.clock.sleep(seconds)
            return self._complete
        with self._changes:
            if self._complete:
                return True
            return self._changes.wait(seconds)

    def changed(self, complete: bool = False) -> None:
        with self._changes:
            self._complete = self._complete or complete
            self._changes.notify_all()

    def ours(self, owner: str) -> bool:
        """Whether ``owner`` is one of this process's workers."""
        return owner.startswith(f"{self._owners}-")

    @property
    def complete(self) -> bool:
        """A worker of this process saw the plan complete."""
        return self._complete

    def list_units(self) -> tuple[list[Unit], bool]:
        """The units, as listed by a listing that began after this call (and whether it is
        this caller's own): workers that ask while a sibling lists wait for the next listing
        and share it (a listing is two queries; a run's workers all list as they start)."""
        with self._changes:
            ticket = self._listings_begun
        with self._listing:
            if self._listings_begun > ticket:  # one began (and ended) after we asked
                return list(self._last_listing), False
            with self._changes:
                self._listings_begun += 1
                added = self._added
            units = plan.list_units(self.store)
            with self._changes:
                self._view = self._last_listing = units
                self._listing_added = added
                self._listed_at = self.clock.monotonic()
            return list(units), True

    def left_here(self, settled: Callable[[Unit], bool]) -> Left:
        """What a listing would find, when this process knows it without one: the last
        listing (or the plan this process created) showed every unit ``settled`` or taken
        here, and this process made no unit since. Then nobody else can free or add a unit:
        a sibling that leaves one, or makes splits, wakes the idle workers, and they list.

        SIBLINGS: a sibling still works on a unit, so there is nothing to claim; FINISHED:
        every unit is settled or finished here, so the plan can complete from what this
        process knows (``known_units``); UNKNOWN: a listing is needed.
        """
        with self._changes:
            if self._listing_added != self._added or not self._last_listing:
                return Left.UNKNOWN
            working = False
            for unit in self._last_listing:
                if settled(unit):
                    continue
                if unit.sk not in self._taken:
                    return Left.UNKNOWN
                working = working or unit.sk not in self._finished_here
            return Left.SIBLINGS if working else Left.FINISHED

    def units_added(self) -> None:
        """Units may exist that the last listing lacks: a worker of this process made splits,
        or took over a segment whose earlier holder may have made some."""
        with self._changes:
            self._added += 1
            self._changes.notify_all()

    def known_units(self) -> list[Unit]:
        """The last listing with the units finished here since shown done, as a listing made
        now would show them (FINISHED: no unit can be missing from it, see ``left_here``).

        A unit finished here was held by this process from its first claim (a segment taken
        over counts as units added) to its finish, so no other process made splits of it;
        settled units do not change. The finish removed the lease, so it is not shown either.
        """
        with self._changes:
            return [
                Unit(u.sk, {**_unleased(u.item), "state": plan.DONE})
                if u.sk in self._finished_here
                else u
                for u in self._last_listing
            ]

    def finished(self, sk: str) -> None:
        """A worker of this process finished ``sk`` (done, its lease released)."""
        with self._changes:
            self._finished_here.add(sk)

    def complete_once(self, complete: Callable[[], bool]) -> bool:
        """``complete()`` (True: nothing is left to do), unless it returned True in a sibling
        already: workers that finish together each see every unit done, and each completion
        is a listing and a write (issue 18)."""
        with self._completing:
            self._nothing_left = self._nothing_left or complete()
            return self._nothing_left

    def view(self) -> list[Unit]:
        """The units as this process last listed them (claims check the real state)."""
        with self._changes:
            return list(self._view)

    def drop_view(self) -> None:
        with self._changes:
            self._view = []

    def take(self, sk: str) -> bool:
        """Reserve ``sk`` for one worker of this process; False if a sibling has it."""
        with self._changes:
            if sk in self._taken:
                return False
            self._taken.add(sk)
            return True

    def left(self, sk: str) -> None:
        """``sk`` is not (or no longer) being worked on here: a listing may offer it again."""
        with self._changes:
            self._taken.discard(sk)

    def listing_due(self, period: float) -> bool:
        """No worker of this process has listed the units for ``period`` seconds: each
        listing is two queries, so idle workers share one per poll (issue 18)."""
        return self.clock.monotonic() - self._listed_at >= period


def _unleased(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k not in ("lease_owner", "lease_expires")}


def _join(thread: threading.Thread) -> None:
    """Wait for ``thread`` in short waits: a signal the kernel hands to another thread runs
    its Python handler (Ctrl-C, a parent's SIGTERM: ``Engine.stop``) only once the main thread
    wakes, and a plain join woke only when the whole run was over."""
    while thread.is_alive():
        thread.join(JOIN_WAKE_SECONDS)


class Worker:
    """Claims units one at a time and drains each within the process budget.

    A kind of unit other than Scan segments and splits (the export backfill's data files)
    overrides the hooks ``settled_unit``, ``complete_plan``, ``work`` and ``prefix_position``.
    """

    def __init__(self, engine: Engine, owner: str, writer: PageWriter) -> None:
        self.engine = engine
        self.owner = owner
        self.writer = writer
        self.store = engine.store
        self.options = engine.options
        self.clock = engine.clock
        self.budget = engine.budget
        self.health = engine.health
        self.source = engine.migration.source
        self.client = engine.migration.clients.dynamodb
        self._unfinished_seen = True  # the last claim's listing held an unfinished unit
        self._finished = False  # the last unit worked on was finished (and released) by us
        self._remote_seen = True  # the last listing held a unit not held by this process
        self._listed: list[plan.Unit] = []  # the last listing this worker made

    def run(self, stagger: float = 0.0) -> None:
        # Workers started together would all race for the same first units (not for those
        # the plan was created with, claimed for them).
        if not self.engine.holds_for(self.owner):
            self.clock.sleep(stagger)
        try:
            self._loop()
        except Interrupted:
            log.warning("%s: budget spent during an outage; positions are saved", self.owner)

    def _loop(self) -> None:
        look = True
        while not self.budget.expired() and not self.engine._errors:
            if self.engine.complete:  # a sibling completed the plan: nothing is left to list
                return
            self._call(self.engine.rates.maybe_refresh)
            claimed = self._call(self._claim) if look else None
            if claimed is not None:
                self.work(*claimed)
                if self._finished:
                    self.engine.finished(claimed[0].sk)
                else:  # left unfinished: it may be claimed again
                    self.engine.left(claimed[0].sk)
                    self.engine.changed()
                continue
            # The claim just listed every unit: while one is unfinished, completing would
            # only list them again (two more queries per idle poll, issue 18).
            if look and not self._unfinished_seen and self._call(self._complete_once):
                self.engine.changed(complete=True)
                return
            # Others hold the remaining leases: wait for one to be left or to expire. A
            # sibling that finishes a unit lists the units itself (and completes the plan),
            # so only a unit left unfinished, new splits or a poll make idle workers list.
            wait = min(self.options.idle_poll_seconds, self.budget.remaining())
            woken = self.engine.idle(max(0.0, wait))
            # Units held by siblings only: they tell when they leave one; a safety poll a lease.
            poll = (
                self.options.idle_poll_seconds if self._remote_seen else self.options.lease_seconds
            )
            look = woken or self.engine.listing_due(poll)

    def _call(self, fn: Callable[[], T]) -> T:
        """``fn()`` with outages backed off (until the budget is spent)."""
        return self.health.call(fn, self.budget.expired)

    def settled_unit(self, unit: plan.Unit) -> bool:
        """A unit no worker will work on again: done (the export worker adds refused files)."""
        return unit.done

    def complete_plan(self) -> bool:
        """Complete the plan from the claim's listing of the units (all done): True if it is
        complete, so nothing is left to do."""
        done = plan.mark_complete(
            self.store, self.options.lease_margin, self.clock.now(), listed=self._listed
        )
        self.engine.plan_completed = self.engine.plan_completed or done
        return done

    def _claim(self) -> tuple[plan.Unit, UnitLease] | None:
        """Claim a unit: from this process's last listing while it shows one nobody here has
        taken (a listing is two queries: issue 18), else from a fresh listing."""
        first = self.engine.preclaimed(self.owner)
        if first is not None:  # the plan was created with it claimed for us
            lease = self._lease(first[0].sk, first[1])
            if not lease.fence.expired():
                self._finished = False
                return first[0], lease
            self.engine.left(first[0].sk)  # too late to use: claimed again like any other
        view = self.engine.view()
        if view:  # one try: a failed claim means the view is out of date
            claimed = self._claim_from(view, tries=1)
            if claimed is not None:
                return claimed
            self.engine.drop_view()  # taken elsewhere meanwhile: look again
        left = self.engine.left_here(self.settled_unit)
        if left is Left.SIBLINGS:  # nothing to claim or complete yet: no listing
            self._unfinished_seen = True
            return None
        if left is Left.FINISHED and self._call(
            lambda: self.engine.complete_once(self._complete_known)
        ):
            self._unfinished_seen = False  # the loop ends: the plan is complete
            return None
        listed, own = self.engine.list_units()
        self._listed = listed
        self._unfinished_seen = any(not self.settled_unit(u) for u in listed)
        # Held by another process: it may leave the unit (or die) without telling us.
        self._remote_seen = any(
            not self.settled_unit(u) and self._held_elsewhere(u) for u in listed
        )
        free = sum(1 for u in listed if self._free(u, self.clock.now()))
        # More than this worker can take (a remote worker left some, or made splits): tell
        # idle siblings, who otherwise only list once per poll per process.
        if own and free > 1:
            self.engine.changed()
        return self._claim_from(listed)

    def _complete_once(self) -> bool:
        return self.engine.complete_once(self.complete_plan)

    def _complete_known(self) -> bool:
        """Every unit is settled or finished here: complete the plan without listing the
        units again (two queries, issue 18)."""
        self._listed = self.engine.known_units()
        return self.complete_plan()

    def _claim_from(
        self, listed: list[plan.Unit], tries: int | None = None
    ) -> tuple[plan.Unit, UnitLease] | None:
        now = self.clock.now()
        splits = [u for u in listed if u.is_split and self._free(u, now)]
        segments = [u for u in listed if not u.is_split and self._free(u, now)]
        # Splits first: they are the long pole. Shuffled so workers spread over the table.
        random.shuffle(splits)
        random.shuffle(segments)
        for unit in splits + segments:
            if tries == 0:
                return None
            if not self.engine.take(unit.sk):  # a sibling is claiming or working on it
                continue
            tries = None if tries is None else tries - 1
            # The fence counts from just before the claim is sent: never later than the lease.
            sent, now = self.clock.monotonic(), self.clock.now()
            item = self.store.claim(
                unit.sk,
                self.owner,
                ttl_seconds=self.options.lease_seconds,
                now=now,
                require_state=plan.PENDING,
            )
            if item is not None:
                self._finished = False
                return plan.Unit(unit.sk, item), self._lease(unit.sk, sent)
            self.engine.left(unit.sk)  # held elsewhere (or no longer pending): not ours
            self._remote_seen = True
        return None

    def _lease(self, sk: str, sent: float) -> UnitLease:
        """Our lease on ``sk``, claimed by a request sent at monotonic ``sent``."""
        return UnitLease(
            self.store,
            sk,
            self.owner,
            clock=self.clock,
            ttl=self.options.lease_seconds,
            margin=self.options.lease_margin,
            sent_at=sent,
        )

    def _held_elsewhere(self, unit: plan.Unit) -> bool:
        """Leased by another process, which may leave the unit (or die) without telling us."""
        owner = str(unit.item.get("lease_owner") or "")
        return bool(owner) and not self.engine.ours(owner)

    def _free(self, unit: plan.Unit, now: float) -> bool:
        item = unit.item
        held = item.get("lease_owner") not in (None, self.owner)
        return not self.settled_unit(unit) and not (
            held and float(item.get("lease_expires", 0)) >= now
        )

    def work(self, unit: plan.Unit, lease: UnitLease) -> None:
        try:
            if unit.is_split:
                self._work_split(unit, lease)
            else:
                self._work_segment(unit, lease)
        except LeaseLost as exc:
            log.warning("%s: leaving %s (%s)", self.owner, unit.sk, exc)

    # -- segments ---------------------------------------------------------------------------
    def _work_segment(self, unit: plan.Unit, lease: UnitLease) -> None:
        reader = SegmentReader(
            self.client,
            self.source.name,
            unit.segment,
            self.engine.total_segments,
            self.options.page_size,
            self.engine.read_limiter,
            self.budget.writes_left,
        )
        skipped = {str(k) for k in unit.item.get("hot_keys_skipped") or []}
        start = load_key(unit.item.get("checkpoint"))
        # Splits of a segment are made only under its lease: a first claim (lease_counter is
        # 1) has no crashed jump to finish, and saves the query that looks (issue 18).
        if int(unit.item.get("lease_counter", 0)) != 1:
            # An earlier holder may have made splits that this process has not listed.
            self.engine.units_added()
            start = self._call(lambda: self._finish_jumps(unit, lease, skipped, start))
        detector = HotKeyDetector(
            self.options.hot_pages,
            self.options.hot_share,
            self.engine.named,
            skipped,
            self.options.hot_min_items,
        )
        detector.restore(unit.item)
        hook = self._detect_hook(unit, lease, detector) if self.source.range_key else None
        self._drain(unit, lease, reader.page, start, hook)

    def _finish_jumps(
        self,
        unit: plan.Unit,
        lease: UnitLease,
        skipped: set[str],
        start: dict[str, Any] | None,
    ) -> dict[str, Any] | None:
        # Only the last split of a crashed owner can be unfinished; applying it is idempotent.
        for jump in unfinished_jumps(lease, unit.segment, skipped):
            assert self.source.range_key is not None
            start = jump.key(self.source.hash_key, self.source.range_key)
            skipped.add(attr_id(jump.hot))
            lease.renew({"checkpoint": dump_key(start), "hot_keys_skipped": sorted(skipped)})
        return start

    def _detect_hook(self, unit: plan.Unit, lease: UnitLease, detector: HotKeyDetector) -> Hook:
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
                lease,
                unit.segment,
                hot,
                lower=last[range_name],
                upper=upper,
                ways=self.options.ways,
            )
            log.info("segment %s: hot key %s split; scan jumps past it", unit.sk, hot)
            self.engine.units_added()  # idle siblings: new units to claim
            extra = {**detector.state(), "hot_keys_skipped": sorted(detector.skipped)}
            return jump.key(hash_name, range_name), extra, 1

        return after_page

    # -- splits -----------------------------------------------------------------------------
    def _work_split(self, unit: plan.Unit, lease: UnitLease) -> None:
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
            self.budget.writes_left,
        )
        start = load_key(unit.item.get("checkpoint")) or {
            hash_name: hot,
            range_name: load_json(str(unit.item["lower"])),
        }
        self._drain(unit, lease, reader.page, start, None)

    # -- the page loop ----------------------------------------------------------------------
    def _drain(
        self,
        unit: plan.Unit,
        lease: UnitLease,
        read: Callable[[Any], Page],
        start: dict[str, Any] | None,
        hook: Hook | None,
    ) -> None:
        """Read, write and checkpoint pages until the unit is done or the budget is spent, then
        release the unit; LeaseLost (nothing released) if the lease is lost meanwhile."""
        counters = {k: int(unit.item.get(k, 0)) for k in COUNTERS}
        go_on = True
        while go_on and self.budget.allows_page():
            go_on, start = self._page(unit, lease, counters, read=read, start=start, hook=hook)
        self._stop(lease)

    def _page(
        self,
        unit: plan.Unit,
        lease: UnitLease,
        counters: dict[str, int],
        *,
        read: Callable[[Any], Page],
        start: dict[str, Any] | None,
        hook: Hook | None,
    ) -> tuple[bool, dict[str, Any] | None]:
        """One page; returns whether to go on, and from where."""
        began = self.clock.monotonic()
        try:
            page = self._call(lambda: read(start))
        except PastDeadline:  # the read cap would keep us past the budget
            return False, start
        result = self.writer.write_page(page.items, lease, self.budget.writes_left)
        if result.lost is not None:
            raise result.lost
        if result.failure is not None:
            return self._backed_off(result.failure, start)
        if result.done < len(page.items):
            self._checkpoint_prefix(unit, lease, counters, page, result)
            return False, start
        try:
            following = self._following(page, result.tally, hook)
        except AWS_ERRORS as exc:
            if not is_transient(exc):
                raise
            return self._backed_off(exc, start)
        self._checkpoint(unit, lease, counters, result.tally, following)
        self.budget.record_page(self.clock.monotonic() - began)
        return following is not None, None if following is None else following[0]

    def _backed_off(
        self, exc: BaseException, start: dict[str, Any] | None
    ) -> tuple[bool, dict[str, Any] | None]:
        """The endpoint failed during a page: back off, then read the page again (an outage
        longer than ``outage_seconds`` raises ServiceUnreachable; positions are saved)."""
        self.health.failed(exc)
        return not self.budget.expired(), start

    def _following(
        self, page: Page, tally: Tally, hook: Hook | None
    ) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """Where the unit continues after a fully written page (None: it is finished), with
        the values to save beside the checkpoint."""
        tally.read = len(page.items)
        if page.last_key is None:
            return None
        if hook is None:
            return page.last_key, {}
        # Not retried here: a hot key's splits are created once per page (a failure re-reads it).
        following, extra, extra_reads = hook(page, page.last_key)
        tally.read += extra_reads
        return following, extra

    def _checkpoint_prefix(
        self,
        unit: plan.Unit,
        lease: UnitLease,
        counters: dict[str, int],
        page: Page,
        result: PageResult,
    ) -> None:
        """The budget cut the page: save the position after its written prefix (if any).

        The key of the prefix's last item is a valid ExclusiveStartKey for the segment's Scan
        and for a split's Query alike; the rest of the page is read again by whoever continues.
        """
        # The rest is read (and counted) again by whoever continues: it is counted apart.
        self.engine.hand_over({CUT_BY_BUDGET: len(page.items) - result.done})
        if result.done == 0:
            return
        result.tally.read = result.done
        position = self.prefix_position(page, result.done)
        self._checkpoint(unit, lease, counters, result.tally, (position, {}))

    def prefix_position(self, page: Page, done: int) -> dict[str, Any]:
        """The position after the first ``done`` items of ``page``: the last one's key (the
        export worker counts lines instead)."""
        return key_of(page.items[done - 1], self.source.key_names)

    def _checkpoint(
        self,
        unit: plan.Unit,
        lease: UnitLease,
        counters: dict[str, int],
        tally: Tally,
        following: tuple[dict[str, Any], dict[str, Any]] | None,
    ) -> None:
        """Save the position after written items (with a renewal); LeaseLost if it is gone.

        One update per page, with the unit's counters: they count exactly the items its
        checkpoints cover (``ControlStore.metrics`` sums them), so a crash between a count and
        a checkpoint cannot lose or double one, and no other update is needed (issue 18). A
        finished unit's last checkpoint also releases the lease (every write of ours is
        acknowledged by then).
        """
        totals = dict(counters)
        for name, n in zip(
            COUNTERS,
            (tally.read, tally.written, tally.superseded, tally.dead, tally.recopied),
            strict=True,
        ):
            totals[name] += n
        key, extra = following if following is not None else (None, {})
        # Only counters that moved: each is a clause of the update (issue 18).
        moved = {name: n for name, n in totals.items() if n != counters[name]}
        values: dict[str, Any] = {"checkpoint": dump_key(key), **moved, **extra}
        if following is None:
            values["state"] = plan.DONE
        with self._costs() as spent:
            if following is None:
                self._call(lambda: lease.finish(values, spent))
                self._finished = True
            else:
                self._call(lambda: lease.renew(values, spent))
        counters.update(totals)
        self.engine.stats.add(tally)

    def _costs(self) -> AbstractContextManager[dict[str, float]]:
        """The request units spent, when due, for a checkpoint to add to its unit (status sums
        them): given back if the checkpoint fails."""
        return self.store.unsent_costs() if self.engine.costs_due() else nullcontext({})

    def _stop(self, lease: UnitLease) -> None:
        """Leave the unit after every write of ours is acknowledged (a finished unit's last
        checkpoint released it already; its counters are on it with its checkpoints)."""
        try:
            if not lease.released:
                self._call(lease.release)
        except Interrupted:
            log.warning("%s: could not release %s; it expires by itself", self.owner, lease.sk)
