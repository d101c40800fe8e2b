"""Fenced backfill leases against moto's server (issue 10, items 1 and 2).

A stalled worker must not write after its lease could have been taken over, must not
checkpoint or split then; the switch to real deletes waits for ``quiet_at``; a page slower than
its lease is not read again and again; a run stops within its budget plus one write.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from backfill import plan
from backfill.lease import UnitLease
from backfill.splits import create_splits
from backfill.worker import Engine, Options
from livemigrate.aws import AwsClients
from livemigrate.clock import FakeClock
from livemigrate.control import ControlStore
from livemigrate.errors import LeaseLost
from livemigrate.examples.hot_outbox import transform as hot_outbox
from livemigrate.items import to_typed
from livemigrate.migration import Migration, open_migration
from livemigrate.versioning import pad_seq
from tests.services import aws_clients, settings_for, unique
from tests.support.backfill import destination, expected, outbox_items, tables

pytestmark = pytest.mark.integration

LEASE = 2.0


def dest_item(clients: AwsClients, migration: Migration, key: dict[str, Any]) -> Any:
    resp = clients.dynamodb.get_item(
        TableName=migration.destination.name, Key=key, ConsistentRead=True
    )
    return resp.get("Item")


class PutStall:
    """Blocks the first destination put of one item inside botocore's send path, i.e. after
    every check the worker makes before a write, until the test lets it go on (a GC or VM
    pause in the middle of sending)."""

    def __init__(self, table: str, marker: str) -> None:
        self.table = table
        self.marker = marker.encode()
        self.stalled = threading.Event()
        self.go_on = threading.Event()

    def __call__(self, request: Any, **_: Any) -> None:
        body = request.body if isinstance(request.body, bytes) else str(request.body).encode()
        if self.table.encode() in body and self.marker in body and not self.stalled.is_set():
            self.stalled.set()
            assert self.go_on.wait(60), "the test never let the stalled put go on"


def test_stalled_worker_resurrects_nothing_after_takeover_completion_and_real_delete() -> None:
    # GIVEN one segment of 30 items copied by worker A (its own client and clock), whose put
    # of item 20 stalls mid-send for longer than its 2 s lease
    clients_a, clients_b = aws_clients(), aws_clients()
    items = outbox_items(30)
    settings = tables(clients_b, items)
    migration_a = open_migration(settings, clients_a)
    migration_b = open_migration(settings, clients_b)
    stall = PutStall(settings.destination_table, "msg-000020")
    clients_a.dynamodb.meta.events.register_first("before-send.dynamodb.PutItem", stall)
    clock_a = FakeClock()
    one = Options(workers=1, write_threads=1, total_segments=1, lease_seconds=LEASE, page_size=100)
    engine_a = Engine(migration_a, one, clock=clock_a)
    engine_a.plan()
    ran_a: list[bool] = []
    thread_a = threading.Thread(target=lambda: ran_a.append(engine_a.run()))
    thread_a.start()
    assert stall.stalled.wait(60)
    try:
        # WHEN worker B, 10 s later, takes the segment over and finishes the plan
        clock_b = FakeClock(clock_a.now() + 10.0)
        engine_b = Engine(migration_b, one, clock=clock_b)
        assert engine_b.run() is True
        # ... and then the application deletes items 20 and 21: by then the consumer makes
        # real deletes (the backfill is complete and quiet), no tombstones
        later = clock_b.now() + 60.0
        assert migration_b.backfill_complete(now=later)
        for i in (20, 21):
            key = dest_key(migration_b, items[i])
            migration_b.writer.remove(key, pad_seq(str(100 + i)), tombstone=False)
            assert dest_item(clients_b, migration_b, key) is None
    finally:
        # ... and A wakes up 10 s (of its clock) later and carries on
        clock_a.advance(10.0)
        stall.go_on.set()
        thread_a.join(60)
    assert not thread_a.is_alive()
    # THEN neither deleted item is back: A's stalled put and its later puts were refused
    for i in (20, 21):
        key = dest_key(migration_b, items[i])
        assert dest_item(clients_b, migration_b, key) is None, f"item {i} resurrected"
    # ... A's page was never checkpointed nor counted: the segment holds B's work only
    seg = migration_b.store.get(plan.seg_sk(0)) or {}
    assert seg["state"] == plan.DONE
    # (B found A's copies of items 0-19: the backfill's own, counted as already copied)
    done = ("items_written", "superseded", "already_copied")
    assert sum(int(seg.get(name, 0)) for name in done) == len(items)
    assert engine_a.stats.snapshot().written == 0
    assert list(plan.units(migration_b.store, plan.SPLIT_PREFIX)) == []


def dest_key(migration: Migration, source_item: dict[str, Any]) -> Any:
    return migration.writer.key(to_typed(next(iter(hot_outbox(source_item)))))


def split(lease: UnitLease) -> None:
    create_splits(
        lease,
        0,
        {"S": "section-outbox|s01"},
        lower={"S": "msg-000000"},
        upper={"S": "msg-000900"},
        ways=4,
    )


def test_stale_worker_cannot_checkpoint_or_split() -> None:
    clients = aws_clients()
    settings = tables(clients, outbox_items(10))
    migration = open_migration(settings, clients)
    store = migration.store
    clock = FakeClock()
    Engine(migration, Options(workers=1, total_segments=1), clock=clock).plan()
    sk = plan.seg_sk(0)
    sent = clock.monotonic()
    assert store.claim(sk, "stale", ttl_seconds=LEASE, now=clock.now()) is not None
    stale = UnitLease(store, sk, "stale", clock=clock, ttl=LEASE, margin=0.0, sent_at=sent)
    # GIVEN the lease expired (by the control table's clock) but nobody took it over yet,
    # while the stale worker's own clock stood still (a pause its monotonic clock missed)
    clock.jump(LEASE + 1.0)
    # THEN a checkpoint or a split of the stale worker is refused
    with pytest.raises(LeaseLost):
        stale.renew({"checkpoint": "x"})
    stale = UnitLease(store, sk, "stale", clock=clock, ttl=LEASE, margin=0.0, sent_at=sent)
    with pytest.raises(LeaseLost):
        split(stale)
    # GIVEN another worker has taken the lease over
    assert store.claim(sk, "taker", ttl_seconds=LEASE, now=clock.now()) is not None
    stale = UnitLease(store, sk, "stale", clock=clock, ttl=LEASE, margin=0.0, sent_at=sent)
    with pytest.raises(LeaseLost):
        split(stale)
    assert list(plan.units(store, plan.SPLIT_PREFIX)) == []
    assert (store.get(sk) or {})["lease_owner"] == "taker"
    # ... while the holder's own splits go through
    taker = UnitLease(
        store, sk, "taker", clock=clock, ttl=LEASE, margin=0.0, sent_at=clock.monotonic()
    )
    split(taker)
    assert len(list(plan.units(store, plan.SPLIT_PREFIX))) == 4


def test_renewal_of_an_expired_lease_is_refused_even_if_nobody_took_it(
    clients: AwsClients,
) -> None:
    store = ControlStore(clients.dynamodb, unique("control"), "m")
    store.ensure_table()
    store.put("SEG#000000", {"state": "pending"})
    assert store.claim("SEG#000000", "me", ttl_seconds=2.0, now=100.0) is not None
    store.renew("SEG#000000", "me", 2.0, now=101.0)
    assert (store.get("SEG#000000") or {})["lease_expires"] == 103.0
    with pytest.raises(LeaseLost):
        store.renew("SEG#000000", "me", 2.0, now=103.5, set_values={"checkpoint": "late"})
    assert (store.get("SEG#000000") or {}).get("checkpoint") is None


def test_real_deletes_wait_until_every_recorded_lease_expired(clients: AwsClients) -> None:
    items = outbox_items(40)
    settings = tables(clients, items)
    migration = open_migration(settings, clients)
    clock = FakeClock()
    options = Options(workers=1, total_segments=2, page_size=10, lease_seconds=30.0)
    engine = Engine(migration, options, clock=clock)
    engine.plan()
    store = migration.store
    # GIVEN a worker that wrote segment 1's last page, checkpointed it done and died before
    # releasing its lease (30 s left)
    ghost = store.claim(plan.seg_sk(1), "ghost", ttl_seconds=30.0, now=clock.now())
    assert ghost is not None
    store.renew(plan.seg_sk(1), "ghost", 30.0, now=clock.now(), set_values={"state": plan.DONE})
    expires = float((store.get(plan.seg_sk(1)) or {})["lease_expires"])
    # WHEN another worker copies segment 0 and completes the plan
    assert engine.run() is True
    held = store.get("PLAN") or {}
    # THEN real deletes wait for the ghost's lease plus the margin, not just for completion
    quiet_at = float(held["quiet_at"])
    assert quiet_at == pytest.approx(expires + options.lease_margin)
    assert float(held["completed_at"]) < expires
    assert not migration.backfill_complete(now=float(held["completed_at"]) + 1.0)
    assert not migration.backfill_complete(now=quiet_at - 0.01)
    assert migration.backfill_complete(now=quiet_at)


class Thief:
    """Another worker: claims the segment whenever its lease has expired (by the run's clock)."""

    def __init__(self, store: ControlStore, clock: FakeClock) -> None:
        self.store = store
        self.clock = clock
        self.stolen = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.01):
            held = self.store.get(plan.seg_sk(0)) or {}
            owner, expires = held.get("lease_owner"), float(held.get("lease_expires", 0))
            now = self.clock.now()
            if owner in (None, "thief") or expires >= now:
                continue
            if self.store.claim(
                plan.seg_sk(0), "thief", ttl_seconds=LEASE, now=now, require_state=plan.PENDING
            ):
                self.stolen += 1


def test_page_slower_than_its_lease_is_read_once_and_the_run_completes() -> None:
    # GIVEN 20 items, 2 s leases and a write cap of 4 items/s: one page takes ~4 s
    clients = aws_clients()
    items = outbox_items(20)
    source_dest = tables(clients, items)
    settings = settings_for(source_dest.source_table, source_dest.destination_table, write_rate=4.0)
    migration = open_migration(settings, clients)
    scans = count_calls(clients, "Scan")
    clock = FakeClock()
    options = Options(
        workers=1, write_threads=1, total_segments=1, lease_seconds=LEASE, budget_seconds=20.0
    )
    engine = Engine(migration, options, clock=clock)
    engine.plan()
    # ... and another worker that takes the segment over as soon as its lease expires
    thief = Thief(migration.store, clock)
    stealing = threading.Thread(target=thief.run)
    stealing.start()
    try:
        # WHEN the backfill runs
        complete = engine.run()
    finally:
        thief.stop.set()
        stealing.join()
    # THEN the lease never expired: the page was read once, every item written once
    assert thief.stolen == 0
    assert complete is True
    assert int(migration.store.metrics()["items_read"]) == len(items)
    assert int(migration.store.metrics()["items_written"]) == len(items)
    assert len(scans) == 1
    assert destination(clients.dynamodb, settings.destination_table) == expected(
        clients.dynamodb, settings.source_table
    )


def test_budget_bound_run_stops_within_budget_plus_one_write_and_resumes() -> None:
    # GIVEN a 20-item page at 4 items/s (~4 s) and a 3 s budget nothing has measured yet
    clients = aws_clients()
    items = outbox_items(20)
    source_dest = tables(clients, items)
    settings = settings_for(source_dest.source_table, source_dest.destination_table, write_rate=4.0)
    migration = open_migration(settings, clients)
    clock = FakeClock()
    options = Options(workers=1, write_threads=1, total_segments=1, budget_seconds=3.0)
    engine = Engine(migration, options, clock=clock)
    engine.plan()
    started = clock.monotonic()
    # WHEN it runs
    assert engine.run() is False
    # THEN it stopped within the budget plus one write (1/4 s), with the written prefix saved
    assert clock.monotonic() - started <= 3.0 + 0.25
    seg = migration.store.get(plan.seg_sk(0)) or {}
    assert seg.get("lease_owner") is None
    written = int(seg["items_written"])
    assert 0 < written < len(items)
    assert seg["checkpoint"] is not None
    # ... and the next run continues from there and finishes the copy exactly
    assert Engine(migration, options, clock=clock).run() is True
    metrics = migration.store.metrics()
    assert int(metrics["items_written"]) == len(items)
    # ... having read the unwritten rest of the cut page twice, counted apart
    assert int(metrics["items_read"]) == len(items)
    assert int(metrics["items_reread_after_budget"]) == len(items) - written
    assert destination(clients.dynamodb, settings.destination_table) == expected(
        clients.dynamodb, settings.source_table
    )


def count_calls(clients: AwsClients, operation: str) -> list[str]:
    calls: list[str] = []
    clients.dynamodb.meta.events.register(
        f"before-call.dynamodb.{operation}", lambda **_: calls.append(operation)
    )
    return calls
