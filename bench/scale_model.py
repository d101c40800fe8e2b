"""A scale model of a large backfill: makespan and the longest unit of work, on a simulated clock.

The question (issue 18): how long does the seed's 13.6 M-item migration take on DynamoDB, and
does any single unit of work outlive the 15-minute Lambda limit? This machine's emulator cannot
say, so this model replays the backfill against a simulated table, in simulated time, with
the tool's own decision code:

- the planner's ``choose_total_segments`` (segment count and size);
- the worker's claim order (splits first, then segments, each in random order, as
  ``Worker._claim``), one page at a time, a unit handed back when the budget ends;
- ``Budget`` (the default 840 s budget: whether a page may start, the written prefix kept when
  it is cut), ``HotKeyDetector`` (fed each page's partition keys), ``split_bounds`` (the hot
  key's sort-key range cut into ``Options.ways`` Query units; the scan jumps past the key);
- ``RateLimiter`` token buckets on a ``FakeClock`` set to each event's time: the write cap
  (50% of the stated table capacity), and the simulated table's per-partition limits (3,000
  RCU / 1,000 WCU; adaptive capacity ignored).

Simplifications, stated: items are modelled in bulk (runs of items, pages of counts), not as 13.6
M objects; every item is ``item_bytes`` (1 write unit, eventually consistent reads); the keys
other than the hot one spread evenly over partitions and never reach a partition's limit at
the cap; a request's latency is lognormal (median ``latency_median``, sigma
``latency_sigma``), and a page's puts (``write_threads`` in flight) take the sum of their
latencies (a normal approximation of the sum) divided by the threads; throttling is modelled as
waiting exactly until the partition has capacity (the AIMD back-off's own delay is not);
control-table requests cost ``control_requests`` latencies per claim and per page; an idle
worker looks for work every ``idle_poll`` seconds.

The plain approach is the seed's: fixed Scan segments of ~200 items, one Lambda per segment,
one put at a time, same cap and latencies, no splitting; a Lambda that reaches 900 s is killed
and its segment retried from its first item (the seed saw four attempts, then gave up).
"""

from __future__ import annotations

import heapq
import math
import random
from bisect import bisect_right
from dataclasses import dataclass, field
from itertools import pairwise

from backfill.budget import Budget
from backfill.hotkey import HotKeyDetector, split_bounds
from backfill.plan import choose_total_segments
from backfill.worker import Options
from livemigrate.clock import FakeClock
from livemigrate.ratelimit import RateLimiter

LAMBDA_LIMIT = 900.0
HOT: dict[str, str] = {"S": "section-outbox|docket"}
_A: dict[str, str] = {"S": "u-a"}
_B: dict[str, str] = {"S": "u-b"}


@dataclass(frozen=True)
class Shape:
    """The table, the capacity and the fleet of the model (defaults: the seed's migration)."""

    items: int = 13_600_000
    hot_share: float = 0.0
    item_bytes: int = 1000
    table_wcu: float = 10_000.0  # the destination's write capacity
    cap_share: float = 0.5  # the backfill's write cap, a share of it
    partition_wcu: float = 1000.0
    partition_rcu: float = 3000.0
    lambdas: int = 64  # concurrent workers (one per Lambda invocation)
    latency_median: float = 0.008
    latency_sigma: float = 0.5
    control_requests: int = 2
    invoke_seconds: float = 0.2
    idle_poll: float = 5.0
    plain_segment_items: int = 200
    plain_attempts: int = 4
    seed: int = 7

    @property
    def write_cap(self) -> float:
        return self.table_wcu * self.cap_share

    @property
    def hot_items(self) -> int:
        return round(self.items * self.hot_share)

    @property
    def analytic_seconds(self) -> float:
        """Items x write units per item / the write cap: no plan beats it."""
        units = max(1, math.ceil(self.item_bytes / 1024))
        return self.items * units / self.write_cap


@dataclass(frozen=True)
class Outcome:
    """What one run of the model gives."""

    makespan: float  # seconds until every item is written (inf: never)
    longest_unit: float  # the longest time one worker held one unit without handing it back
    units: int
    note: str = ""


class Latency:
    """Per-request latency: lognormal; sums of many requests by their normal approximation."""

    def __init__(self, shape: Shape, rng: random.Random) -> None:
        self.rng = rng
        self.mu = math.log(shape.latency_median)
        self.sigma = shape.latency_sigma
        self.mean = math.exp(self.mu + self.sigma**2 / 2)
        self.sd = math.sqrt((math.exp(self.sigma**2) - 1) * self.mean**2)

    def one(self) -> float:
        return self.rng.lognormvariate(self.mu, self.sigma)

    def total(self, n: int) -> float:
        if n <= 0:
            return 0.0
        return max(0.0, self.rng.gauss(n * self.mean, math.sqrt(n) * self.sd))


class Table:
    """The simulated destination and source: the cap and the hot partition's limits."""

    def __init__(self, shape: Shape, clock: FakeClock) -> None:
        self.shape = shape
        self.clock = clock
        self.cap = RateLimiter(shape.write_cap, clock)
        self.hot_writes = RateLimiter(shape.partition_wcu, clock)
        self.hot_reads = RateLimiter(shape.partition_rcu, clock)
        self.write_units = max(1, math.ceil(shape.item_bytes / 1024))
        self.read_units_per_item = shape.item_bytes / 4096 / 2  # eventually consistent

    def waits(self, items: int, hot: int) -> float:
        """Seconds until the cap and the hot partition allow ``items`` (``hot`` of them hot)."""
        wait = self.cap.reserve(items * self.write_units)
        if hot:
            wait = max(wait, self.hot_writes.reserve(hot * self.write_units))
            wait = max(wait, self.hot_reads.reserve(math.ceil(hot * self.read_units_per_item)))
        return wait

    def refund(self, items: int, hot: int) -> None:
        self.cap.refund(items * self.write_units)
        if hot:
            self.hot_writes.refund(hot * self.write_units)


@dataclass
class Unit:
    """A segment (runs of ordinary and hot items in scan order) or a split of the hot key."""

    name: str
    runs: list[tuple[bool, int]]  # (hot?, count)
    is_split: bool = False
    pos: int = 0
    detector: HotKeyDetector | None = None
    hot_first: int = 0  # index (in the hot key's sort order) of this unit's first hot item

    @property
    def size(self) -> int:
        return sum(n for _, n in self.runs)

    @property
    def done(self) -> bool:
        return self.pos >= self.size

    def hot_between(self, start: int, end: int) -> int:
        hot, at = 0, 0
        for is_hot, n in self.runs:
            lo, hi = max(start, at), min(end, at + n)
            if is_hot and hi > lo:
                hot += hi - lo
            at += n
        return hot

    def is_hot_at(self, index: int) -> bool:
        at = 0
        for is_hot, n in self.runs:
            if index < at + n:
                return is_hot
            at += n
        return False

    def hot_run(self) -> tuple[int, int]:
        """(start, end) of the hot run in this unit's scan order."""
        at = 0
        for is_hot, n in self.runs:
            if is_hot:
                return at, at + n
            at += n
        return 0, 0


@dataclass
class WorkerState:
    budget: Budget
    unit: Unit | None = None
    held_since: float = 0.0


@dataclass
class Fleet:
    """The tool's workers on the simulated clock: an event loop over pages."""

    shape: Shape
    options: Options = field(default_factory=Options)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.shape.seed)
        self.clock = FakeClock(start=0.0)
        self.table = Table(self.shape, self.clock)
        self.latency = Latency(self.shape, self.rng)
        self.pending: list[Unit] = []
        self.working = 0
        self.longest = 0.0
        self.finished_at = 0.0
        self.unit_count = 0
        self.events: list[tuple[float, int, int]] = []

    # -- plan -------------------------------------------------------------------------------
    def plan(self) -> None:
        shape = self.shape
        total = choose_total_segments(
            shape.items, shape.items * shape.item_bytes, self.options.workers
        )
        ordinary = shape.items - shape.hot_items
        hot_segment = self.rng.randrange(total)
        for s in range(total):
            n = ordinary // total + (1 if s < ordinary % total else 0)
            runs: list[tuple[bool, int]] = [(False, n)]
            if s == hot_segment and shape.hot_items:
                before = self.rng.randrange(n + 1)
                runs = [(False, before), (True, shape.hot_items), (False, n - before)]
            self.pending.append(Unit(f"SEG#{s:06d}", runs, detector=self._detector()))
        self.unit_count = total

    def _detector(self) -> HotKeyDetector:
        o = self.options
        return HotKeyDetector(o.hot_pages, o.hot_share, (), set(), o.hot_min_items)

    # -- event loop -------------------------------------------------------------------------
    def run(self) -> Outcome:
        self.plan()
        workers = [self._invocation(0.0) for _ in range(self.shape.lambdas)]
        for i in range(len(workers)):
            self._at(self.rng.uniform(0, 0.05 * i), i)
        while self.events:
            t, _, i = heapq.heappop(self.events)
            self.clock.advance(t - self.clock.monotonic())
            self._step(workers, i, t)
        return Outcome(self.finished_at, self.longest, self.unit_count)

    def _at(self, t: float, worker: int) -> None:
        heapq.heappush(self.events, (t, self.rng.random().__hash__(), worker))

    def _invocation(self, t: float) -> WorkerState:
        return WorkerState(Budget(t + self.options.budget_seconds, self.clock, 0.5))

    def _step(self, workers: list[WorkerState], i: int, t: float) -> None:
        state = workers[i]
        if state.unit is None:
            if not self.pending:
                if self.working:  # splits may still appear: look again later
                    self._at(t + self.shape.idle_poll, i)
                return
            state.unit = self._claim()
            state.held_since = t
            self.working += 1
            self._at(t + self.shape.control_requests * self.latency.one(), i)
            return
        if not state.budget.allows_page():
            self._hand_back(state, t)
            workers[i] = self._invocation(t + self.shape.invoke_seconds)
            self._at(t + self.shape.invoke_seconds, i)
            return
        self._at(self._page(state, t), i)

    def _claim(self) -> Unit:
        splits = [u for u in self.pending if u.is_split]
        pool = splits or self.pending
        unit = pool[self.rng.randrange(len(pool))]
        self.pending.remove(unit)
        return unit

    def _hand_back(self, state: WorkerState, t: float) -> None:
        unit = state.unit
        assert unit is not None
        self.longest = max(self.longest, t - state.held_since)
        self.working -= 1
        state.unit = None
        if unit.done:
            self.finished_at = max(self.finished_at, t)
        else:
            self.pending.append(unit)

    # -- one page ---------------------------------------------------------------------------
    def _page(self, state: WorkerState, t: float) -> float:
        """Read, write and checkpoint one page from ``t``; returns when the worker is free."""
        unit = state.unit
        assert unit is not None
        n = min(self.options.page_size, unit.size - unit.pos)
        hot = unit.hot_between(unit.pos, unit.pos + n)
        write = self.latency.total(n) / self.options.write_threads
        took = self.latency.one() + max(write, self.table.waits(n, hot))
        took += self.shape.control_requests * self.latency.one()
        left = state.budget.writes_left()
        if took > left:  # the budget cuts the page: the written prefix is kept
            kept = max(0, math.floor(n * left / took))
            self.table.refund(n - kept, unit.hot_between(unit.pos + kept, unit.pos + n))
            unit.pos += kept
            self._hand_back(state, t + max(0.0, left))
            return t + max(0.0, left)
        state.budget.record_page(took)
        unit.pos += n
        if not unit.is_split:
            self._detect(unit, n)
        if unit.done:
            self._hand_back(state, t + took)
        return t + took

    def _detect(self, unit: Unit, n: int) -> None:
        """The real detector on this page's partition keys; a hot key is split and jumped."""
        assert unit.detector is not None
        if unit.done or not unit.is_hot_at(unit.pos - 1):
            unit.detector.observe([_A, _B], None if unit.done else _B)
            return
        hot = unit.hot_between(unit.pos - n, unit.pos)
        if unit.detector.observe([HOT] * hot + [_A] * (n - hot), HOT) is None:
            return
        start, end = unit.hot_run()
        self._split(first=unit.pos - start, last=end - start - 1)
        unit.pos = end  # the scan jumps past the hot key's last sort key

    def _split(self, first: int, last: int) -> None:
        """Query units covering hot items (first-1, last], cut where ``split_bounds`` cuts."""
        lower, upper = {"S": _sk(first - 1)}, {"S": _sk(last)}
        bounds = split_bounds(lower, upper, self.options.ways)
        counts = [first] + [_items_up_to(b["S"], last) for b in bounds[1:-1]] + [last + 1]
        for j, (lo, hi) in enumerate(pairwise(counts)):
            if hi > lo:
                self.pending.append(Unit(f"SPLIT#{j}", [(True, hi - lo)], True, hot_first=lo))
                self.unit_count += 1


def _sk(i: int) -> str:
    return f"msg-{i:09d}"


def _items_up_to(bound: str, last: int) -> int:
    """How many hot items (sort keys msg-000000000 .. msg-<last>) sort at or below ``bound``."""

    class Keys:
        def __len__(self) -> int:
            return last + 1

        def __getitem__(self, i: int) -> str:
            return _sk(i)

    return bisect_right(Keys(), bound)


# -- the plain approach -----------------------------------------------------------------------
def plain(shape: Shape) -> Outcome:
    """The seed's fan-out: ~200-item Scan segments, one Lambda each, one put at a time."""
    rng = random.Random(shape.seed)
    clock = FakeClock(start=0.0)
    table = Table(shape, clock)
    latency = Latency(shape, rng)
    count = math.ceil(shape.items / shape.plain_segment_items)
    hot_segment = rng.randrange(count)
    free = [(rng.uniform(0, 0.05 * i), i) for i in range(shape.lambdas)]
    heapq.heapify(free)
    finished, longest, never = 0.0, 0.0, False
    for s in range(count):
        t, lam = heapq.heappop(free)
        clock.advance(t - clock.monotonic())
        n = shape.items // count + (1 if s < shape.items % count else 0)
        hot = shape.hot_items if s == hot_segment else 0
        took, done = _plain_segment(shape, table, latency, n + hot, hot)
        attempts = 1 if done else shape.plain_attempts
        never = never or not done
        longest = max(longest, took)
        end = t + attempts * took
        finished = max(finished, end) if done else finished
        heapq.heappush(free, (end, lam))
    note = "the hot segment never finishes" if never else ""
    return Outcome(math.inf if never else finished, longest, count, note)


def _plain_segment(
    shape: Shape, table: Table, latency: Latency, n: int, hot: int
) -> tuple[float, bool]:
    """Seconds one Lambda spends on a segment, and whether it finished within 15 minutes."""
    took = shape.invoke_seconds + latency.total(n) + table.waits(n, hot)
    if took <= LAMBDA_LIMIT:
        return took, True
    kept = math.floor(n * LAMBDA_LIMIT / took)  # what the killed attempt had written
    table.refund(n - kept, max(0, hot - kept))
    return LAMBDA_LIMIT, False


def tool(shape: Shape, options: Options | None = None) -> Outcome:
    """The tool's backfill (default options, one worker per Lambda) on ``shape``."""
    return Fleet(shape, options or Options(workers=1)).run()


def table_rows(shares: tuple[float, ...] = (0.0, 0.01, 0.05, 0.2)) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for share in shares:
        shape = Shape(hot_share=share)
        ours, seed = tool(shape), plain(shape)
        rows.append(
            {
                "hot_share": share,
                "analytic_min": shape.analytic_seconds / 60,
                "tool_makespan_min": ours.makespan / 60,
                "tool_longest_unit_min": ours.longest_unit / 60,
                "tool_units": ours.units,
                "plain_makespan_min": seed.makespan / 60,
                "plain_longest_unit_min": seed.longest_unit / 60,
                "plain_units": seed.units,
            }
        )
    return rows


def markdown(rows: list[dict[str, object]]) -> str:
    def minutes(v: object) -> str:
        value = float(str(v))
        return "never" if math.isinf(value) else f"{value:.0f} min"

    def short(v: object) -> str:
        value = float(str(v))
        return f"{value * 60:.1f} s" if value < 1 else f"{value:.1f} min"

    lines = [
        "| hot key share | bound (items x WCU / cap) | livemigrate makespan | longest unit "
        "| units | plain makespan | plain longest Lambda | plain Lambdas |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        plain_unit = float(str(r["plain_longest_unit_min"]))
        killed = " (killed at 15)" if plain_unit * 60 >= LAMBDA_LIMIT else ""
        lines.append(
            f"| {float(str(r['hot_share'])):.0%} | {minutes(r['analytic_min'])} "
            f"| {minutes(r['tool_makespan_min'])} | {short(r['tool_longest_unit_min'])} "
            f"| {r['tool_units']} | {minutes(r['plain_makespan_min'])} "
            f"| {short(plain_unit)}{killed} | {r['plain_units']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(table_rows()))
