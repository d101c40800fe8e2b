"""The segment plan in the control table: PLAN, SEG#<nnnnnn> and SPLIT#<nnnnnn>#<n> items.

The plan is written once per migration and read by every worker on every machine:

- ``PLAN`` {state: planned | running | complete, total_segments, created_at, completed_at,
  quiet_at, degraded_at, recovered_at, degraded_error}
- ``SEG#<nnnnnn>`` {state: pending | done, checkpoint, items_read, items_written, superseded,
  dead_lettered, hot_keys_skipped, lease fields}
- ``SPLIT#<nnnnnn>#<n>`` {state, segment, hot_key, lower (exclusive), upper (inclusive),
  checkpoint, the same counters and lease fields}

Keys and checkpoints are stored as JSON text of DynamoDB's typed form, so they go back into
``ExclusiveStartKey`` unchanged.

When the plan completes, PLAN also gets ``quiet_at``: the stream consumer switches from
tombstones to real deletes only from then on (``Migration.backfill_complete``). Why that is
enough for no backfill write to land after a real delete (ARCHITECTURE.md rule 11):

- a worker writes only inside its fence: before ``sent + lease_seconds - margin`` on its
  monotonic clock, where ``sent`` is when its claim or last successful renewal was sent, so
  before the ``lease_expires`` that claim or renewal recorded (the margin covers clock skew
  and a write already sent);
- a unit is taken over only after its ``lease_expires``, and a renewal or checkpoint needs the
  lease still ours and unexpired, so a stale worker's lease expired before the takeover, and
  its splits (a transaction conditional on the same) are refused after it too;
- the plan completes only after every unit is done, so after every takeover: a stale holder
  of a unit finished by someone else stopped writing before completion;
- a holder that finished (or stopped at its budget) released its lease only after all its
  writes were acknowledged; a holder that died after its last checkpoint still has its lease
  recorded, and so has any other lease still recorded at completion;
- so ``quiet_at = max(completion time, latest lease_expires still recorded) + margin`` is after
  every backfill write was sent, and the margin again covers skew and writes in flight.

``state == complete`` keeps its meaning for status and the cutover gates (the backfill gate
needs no wait: tombstones are purged only after the consumer switched to real deletes).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from livemigrate import keys
from livemigrate.control import TRANSACT_ITEMS, ControlStore
from livemigrate.counters import fresh_unit_counters
from livemigrate.errors import PreflightError
from livemigrate.keys import PLAN
from livemigrate.migration import BACKFILL_COMPLETE

# The unit families, as the backfill's modules and tests name them (spelled in livemigrate.keys).
SEG_PREFIX = keys.SEG_PREFIX
SPLIT_PREFIX = keys.SPLIT_PREFIX
PENDING = "pending"
DONE = "done"
PLANNED = "planned"
RUNNING = "running"
COMPLETE = BACKFILL_COMPLETE

# Segments small enough that one finishes well inside a Lambda budget on a provisioned table,
# and enough of them that every worker has several to pick from.
ITEMS_PER_SEGMENT = 50_000
BYTES_PER_SEGMENT = 256 * 1024 * 1024
# One per worker of the whole run: a Scan segment is a hash range, so segments of a table hold
# nearly the same number of items, and a hot key is evened out by splits, not by more segments.
# Each more segment is a claim and a finish (control-table writes), and on moto a Scan that
# walks the whole table (measured: 2 per worker cost ~2% throughput, 4 per worker ~15%, on a
# 1,500-item table; bench/bench_backfill.py, issue 18).
SEGMENTS_PER_WORKER = 1
MAX_SEGMENTS = 1_000_000
# quiet_at margin when the caller does not say (the default fence margin of a 30 s lease).
QUIET_MARGIN_SECONDS = 10.0


def seg_sk(segment: int) -> str:
    return keys.segment(segment)


def split_sk(segment: int, n: int) -> str:
    return keys.split(segment, n)


def choose_total_segments(item_count: int, size_bytes: int, workers: int) -> int:
    """TotalSegments from the table's size, at least one per worker (``workers``: of every
    process or invocation of the run)."""
    by_items = math.ceil(item_count / ITEMS_PER_SEGMENT)
    by_bytes = math.ceil(size_bytes / BYTES_PER_SEGMENT)
    return max(1, min(MAX_SEGMENTS, max(by_items, by_bytes, workers * SEGMENTS_PER_WORKER)))


@dataclass(frozen=True)
class Unit:
    """One claimable piece of work: a Scan segment or a hot-key Query range."""

    sk: str
    item: dict[str, Any]

    @property
    def is_split(self) -> bool:
        return self.sk.startswith(SPLIT_PREFIX)

    @property
    def segment(self) -> int:
        return int(self.sk.split("#")[1])

    @property
    def done(self) -> bool:
        return self.item.get("state") == DONE


def ensure_plan(store: ControlStore, total_segments: int, leases: Leases | None = None) -> Planned:
    """Write the plan if there is none; returns it (the first one written wins).

    Safe to run from many processes at once and after a crash half-way (``write_plan``).
    """
    fresh = {"state": PLANNED, "total_segments": total_segments, "created_at": time.time()}

    def same_kind(plan: dict[str, Any]) -> None:
        if plan.get("source") == "export":  # issue 16: one plan a migration, never mixed
            raise PreflightError(
                f"migration {store.migration_id!r} is loading the export {plan.get('export_uri')}",
                f"run `livemigrate backfill --from-export {plan.get('export_uri')}` to finish it",
            )

    def segments(total: int) -> list[dict[str, Any]]:
        return [_fresh(n) for n in range(total)]

    return write_plan(store, fresh, same_kind, segments, leases)


@dataclass(frozen=True)
class Leases:
    """Units to create already claimed, the n-th by ``owners[n]`` until ``now + ttl``: the
    planning process runs them next, and saves a claim per worker and the mark to running
    (issue 18). Only for a process that plans and runs alone (not a parent of ``--processes``
    children, nor the state machine's Plan step: their workers are elsewhere)."""

    owners: list[str]
    ttl: float
    now: float

    def on(self, n: int, unit: dict[str, Any]) -> dict[str, Any]:
        if n >= len(self.owners):
            return unit
        lease = {"lease_owner": self.owners[n], "lease_expires": self.now + self.ttl}
        return {**unit, **lease, "lease_counter": 1}


@dataclass(frozen=True)
class Planned:
    """The plan as held, and its units when this call created them (None: it found a plan)."""

    plan: dict[str, Any]
    created: list[Unit] | None = None

    @property
    def total_segments(self) -> int:
        return int(self.plan["total_segments"])


def write_plan(
    store: ControlStore,
    fresh: dict[str, Any],
    check: Callable[[dict[str, Any]], None],
    units: Callable[[int], list[dict[str, Any]]],
    leases: Leases | None = None,
) -> Planned:
    """PLAN as held (``fresh`` unless one exists, which ``check`` may refuse), with its
    units (``units(total)``, the n-th stored as ``SEG#<n>``) written.

    A plan that fits in one transaction is written whole, in one request (issue 18); else,
    and when a plan exists, PLAN is written first, conditionally, in the request that reads
    the one held, then every missing unit, conditionally, a few at a time: many processes
    may plan at once, and one may die half-way. ``leases``: a plan written whole is created
    running, its first units claimed.
    """
    wanted = int(fresh["total_segments"])
    if wanted < TRANSACT_ITEMS:
        whole = {**fresh, "segments_written": True}
        made = {seg_sk(n): unit for n, unit in enumerate(units(wanted))}
        if leases is not None:
            whole["state"] = RUNNING
            made = {sk: leases.on(n, unit) for n, (sk, unit) in enumerate(made.items())}
        held = store.create_all({PLAN: whole, **made})
        if held is None:
            return Planned(whole, [Unit(sk, dict(item)) for sk, item in made.items()])
        # {}: no PLAN, yet a unit exists (written by a version that wrote them one by one).
        held = held or store.put_or_get(PLAN, fresh)
    else:
        held = store.put_or_get(PLAN, fresh)
    plan = fresh if held is None else held
    check(plan)
    total = int(plan["total_segments"])
    if plan.get("segments_written"):
        return Planned(plan)
    # A plan just created has no unit yet: no need to count them.
    if held is None or store.count(SEG_PREFIX) < total:

        def write(pair: tuple[int, dict[str, Any]]) -> None:
            store.put(seg_sk(pair[0]), pair[1], only_if_absent=True)

        with ThreadPoolExecutor(max(1, min(8, total))) as pool:
            list(pool.map(write, enumerate(units(total))))
    store.update(PLAN, {"segments_written": True}, returns=False)
    return Planned(plan)


def _fresh(segment: int) -> dict[str, Any]:
    return {
        "state": PENDING,
        "segment": segment,
        "checkpoint": None,
        **fresh_unit_counters(),
        "hot_keys_skipped": [],
    }


def units(store: ControlStore, prefix: str) -> Iterator[Unit]:
    for sk, item in store.query(prefix):
        yield Unit(sk, item)


def all_done(store: ControlStore) -> bool:
    """Every segment and then every split is done (segments first: a live segment may still
    add splits, a done one never does)."""
    if not all(u.done for u in units(store, SEG_PREFIX)):
        return False
    return all(u.done for u in units(store, SPLIT_PREFIX))


def mark_running(store: ControlStore) -> None:
    store.update(
        PLAN,
        {"state": RUNNING},
        condition="#state = :planned",
        condition_values={"planned": PLANNED},
    )


def mark_complete(
    store: ControlStore,
    margin: float = QUIET_MARGIN_SECONDS,
    now: float | None = None,
    listed: Sequence[Unit] | None = None,
) -> bool:
    """Set PLAN.state = complete (with ``quiet_at``) once everything is done; True if complete.

    Parameters
    ----------
    margin:
        Seconds added to the latest lease expiry for ``quiet_at`` (clock skew, writes in
        flight); at least the workers' fence margin.
    now:
        Wall time (default: this machine's clock).
    listed:
        The units as just listed by ``list_units`` (segments, then splits), instead of
        listing them again: a done segment adds no split, so none can be missing.
    """
    found = list_units(store, until_undone=True) if listed is None else list(listed)
    if not all(u.done for u in found):
        return False
    now = time.time() if now is None else now
    updated = store.update(
        PLAN,
        {
            "state": BACKFILL_COMPLETE,
            "completed_at": now,
            "quiet_at": max(now, latest_lease_expiry(found)) + margin,
        },
        condition="attribute_exists(#state) AND #state <> :complete",
        condition_values={"complete": BACKFILL_COMPLETE},
    )
    # Refused: complete already (or no plan at all), which only a read can tell apart.
    return updated is not None or plan_state(store) == BACKFILL_COMPLETE


def list_units(store: ControlStore, *, until_undone: bool = False) -> list[Unit]:
    """Every segment, then every split (in this order: a segment listed done adds no split
    after it). ``until_undone``: stop before the splits when a segment is not done."""
    segments = list(units(store, SEG_PREFIX))
    if until_undone and not all(u.done for u in segments):
        return segments
    return segments + list(units(store, SPLIT_PREFIX))


def latest_lease_expiry(held: list[Unit]) -> float:
    """The latest ``lease_expires`` recorded on any of the units (0 if none holds a lease)."""
    return max(
        (float(u.item["lease_expires"]) for u in held if u.item.get("lease_expires") is not None),
        default=0.0,
    )


def plan_state(store: ControlStore) -> str | None:
    plan = store.get(PLAN)
    return None if plan is None else str(plan.get("state"))
