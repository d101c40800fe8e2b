"""The backfill engine against moto's server: hot keys, live-write races, leases, budgets."""

from __future__ import annotations

import argparse
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

import pytest

from backfill import plan
from backfill.cli import add_arguments, run
from backfill.lambda_handler import invoke
from backfill.worker import Engine, Options
from livemigrate.aws import AwsClients
from livemigrate.clock import FakeClock
from livemigrate.config import Settings
from livemigrate.control import ControlStore
from livemigrate.destination import Outcome
from livemigrate.exitcodes import ExitCode
from livemigrate.interrupts import SIGNALS, on_first_signal
from livemigrate.items import to_plain
from livemigrate.migration import open_migration
from livemigrate.versioning import TOMBSTONE_ATTR, pad_seq
from tests.services import settings_for
from tests.support.backfill import (
    HOT,
    destination,
    expected,
    outbox_items,
    settings_env,
    tables,
)

pytestmark = pytest.mark.integration


def backfill(settings: Settings, clients: AwsClients, *flags: str) -> int:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return run(parser.parse_args(["--without-consumer", *flags]), settings, clients)


def store_of(settings: Settings, clients: AwsClients) -> ControlStore:
    return ControlStore(clients.dynamodb, settings.control_table, settings.migration_id)


def test_half_the_items_under_one_key_are_split_and_copied_exactly(clients: AwsClients) -> None:
    # GIVEN a table where half of 800 items share one partition key
    items = outbox_items(800, hot_share=0.5)
    settings = tables(clients, items)
    # WHEN the backfill runs with pages of 40 items
    rc = backfill(
        settings,
        clients,
        *("--workers", "3", "--total-segments", "6", "--page-size", "40"),
        *("--hot-min-items", "100"),
    )
    # THEN the hot key got sort-key splits that all finished, and the copy is exact
    assert rc == 0
    store = store_of(settings, clients)
    splits = list(plan.units(store, plan.SPLIT_PREFIX))
    assert len(splits) >= 2
    assert all(u.done and u.item["hot_key"] == HOT for u in splits)
    assert sum(int(u.item["items_read"]) for u in splits) > 0
    assert destination(clients.dynamodb, settings.destination_table) == expected(
        clients.dynamodb, settings.source_table
    )
    assert plan.plan_state(store) == plan.COMPLETE
    read = int(store.metrics()["items_read"])
    assert len(items) <= read <= 1.02 * len(items)


def test_operator_named_hot_key_is_split_at_first_sight(clients: AwsClients) -> None:
    items = outbox_items(300, hot_share=0.5)
    settings = tables(clients, items)
    # Automatic detection is off (it would need 1000 pages): only the named key may split.
    rc = backfill(
        settings,
        clients,
        *("--workers", "2", "--total-segments", "2", "--page-size", "25"),
        *("--hot-pages", "1000", "--hot-key", HOT, "--split-ways", "3"),
    )
    assert rc == 0
    splits = list(plan.units(store_of(settings, clients), plan.SPLIT_PREFIX))
    assert [u.item["index"] for u in splits] == [0, 1, 2]
    assert destination(clients.dynamodb, settings.destination_table) == expected(
        clients.dynamodb, settings.source_table
    )


@dataclass
class Raced:
    settings: Settings
    live_key: dict[str, Any]
    deleted_key: dict[str, Any]


@pytest.fixture
def raced(clients: AwsClients) -> Raced:
    """A backfill that runs after a live write and a tombstone reached the destination."""
    items = outbox_items(60)
    settings = tables(clients, items)
    migration = open_migration(settings, clients)
    live = next(iter(migration.transformer.run(items[3])))
    gone = next(iter(migration.transformer.run(items[4])))
    # GIVEN the stream consumer already applied an update to one key and a delete to another
    live_item = {**live, "body": {"S": "written live"}}
    migration.writer.put_if_newer(live_item, pad_seq("100"))
    migration.writer.remove(migration.writer.key(gone), pad_seq("101"), tombstone=True)
    # WHEN the backfill reaches those keys later
    assert backfill(settings, clients, "--workers", "2", "--page-size", "20") == 0
    return Raced(settings, migration.writer.key(live), migration.writer.key(gone))


def get(clients: AwsClients, table: str, key: dict[str, Any]) -> dict[str, Any]:
    resp = clients.dynamodb.get_item(TableName=table, Key=key, ConsistentRead=True)
    return to_plain(resp["Item"])


def test_live_write_to_a_key_not_yet_reached_wins(clients: AwsClients, raced: Raced) -> None:
    held = get(clients, raced.settings.destination_table, raced.live_key)
    # THEN the live value stays and the backfill counted itself superseded
    assert held["body"] == "written live"
    metrics = store_of(raced.settings, clients).metrics()
    assert metrics["superseded_by_live_write"] == 2
    assert metrics["items_written"] == 58


def test_tombstone_blocks_a_late_backfill_write(clients: AwsClients, raced: Raced) -> None:
    held = get(clients, raced.settings.destination_table, raced.deleted_key)
    # THEN the deleted item is not resurrected: the tombstone is still what D holds
    assert held[TOMBSTONE_ATTR] is True
    assert "body" not in held


def test_expired_lease_of_a_dead_worker_is_taken_over_from_its_checkpoint(
    clients: AwsClients,
) -> None:
    items = outbox_items(200)
    settings = tables(clients, items)
    migration = open_migration(settings, clients)
    clock = FakeClock()
    options = Options(workers=1, page_size=20, total_segments=2, lease_seconds=2.0)
    engine = Engine(migration, options, clock=clock)
    engine.plan()
    store = migration.store
    # GIVEN a worker that claimed segment 0 and died without ever checkpointing
    ghost = store.claim(plan.seg_sk(0), "ghost", ttl_seconds=2.0, now=clock.now())
    assert ghost is not None
    # WHEN another worker runs (idle waiting advances the fake clock past the lease's expiry)
    assert engine.run() is True
    # THEN it took segment 0 over and the copy is complete and exact
    seg0 = store.get(plan.seg_sk(0)) or {}
    assert seg0["state"] == plan.DONE
    assert seg0["lease_counter"] == 2
    assert destination(clients.dynamodb, settings.destination_table) == expected(
        clients.dynamodb, settings.source_table
    )


def test_budget_stops_with_position_saved_and_next_run_continues(clients: AwsClients) -> None:
    items = outbox_items(200)
    settings = tables(clients, items)
    migration = open_migration(settings, clients)
    # One worker: no two claims race (moto's conditional writes are not atomic under
    # concurrency), so the read count below is exact.
    options = Options(workers=1, page_size=10, total_segments=3, budget_seconds=1.0)
    runs = 0
    while not Engine(migration, options).run():
        runs += 1
        store = migration.store
        # THEN after each budget: no lease is left held, some checkpoint exists
        held = [u for u in plan.units(store, plan.SEG_PREFIX) if u.item.get("lease_owner")]
        assert held == []
        assert runs < 60
    assert runs >= 1
    assert destination(clients.dynamodb, settings.destination_table) == expected(
        clients.dynamodb, settings.source_table
    )
    # No page was read twice: budget stops happen between pages.
    assert int(migration.store.metrics()["items_read"]) == len(items)


def test_idle_workers_leave_as_soon_as_the_last_unit_completes_the_plan(
    clients: AwsClients,
) -> None:
    # GIVEN one unit for three workers that poll only every 60 s while others hold the units
    settings = tables(clients, outbox_items(30))
    options = Options(workers=3, page_size=10, total_segments=1, idle_poll_seconds=60.0)
    started = time.monotonic()
    # WHEN the worker holding the unit completes the plan
    assert Engine(open_migration(settings, clients), options).run()
    # THEN its idle siblings are woken and leave at once: the run does not wait out their poll
    # (it did: a short run's end waited up to idle_poll_seconds, issue 18)
    assert time.monotonic() - started < 30.0
    assert destination(clients.dynamodb, settings.destination_table) == expected(
        clients.dynamodb, settings.source_table
    )


def test_a_stop_before_the_run_starts_its_budget_still_stops_the_run(clients: AwsClients) -> None:
    # GIVEN a planned backfill of 300 items
    settings = tables(clients, outbox_items(300))
    migration = open_migration(settings, clients)
    engine = Engine(migration, Options(workers=2, page_size=50, total_segments=2))
    engine.plan()
    # WHEN Ctrl-C (SIGTERM from a parent) comes before the run has started its budget
    engine.stop()
    # THEN the run stops at once: nothing is read, no lease is left held (it copied the whole
    # table: the stop ended only the budget of the moment, and run() started a new one)
    assert not engine.run()
    assert int(migration.store.metrics().get("items_read", 0)) == 0
    assert not [
        u for u in plan.units(migration.store, plan.SEG_PREFIX) if u.item.get("lease_owner")
    ]


def test_a_signal_handed_to_a_worker_thread_still_stops_the_run_soon(
    clients: AwsClients,
) -> None:
    # GIVEN a backfill of 300 items capped at 20 writes/s (15 s or more), stopped on SIGTERM
    # as `livemigrate backfill` is (a parent sends its children SIGTERM on Ctrl-C)
    source = tables(clients, outbox_items(300))
    settings = settings_for(source.source_table, source.destination_table, write_rate=20.0)
    migration = open_migration(settings, clients)
    engine = Engine(migration, Options(workers=2, page_size=10, total_segments=2))
    engine.plan()
    on_first_signal(engine.stop, lambda _: None)

    def signal_a_worker() -> None:
        time.sleep(1.5)
        worker = next(t for t in threading.enumerate() if "_guarded" in t.name)
        # the kernel may hand a process's signal to any thread: here, to a worker
        signal.pthread_kill(worker.ident or 0, signal.SIGTERM)

    sender = threading.Thread(target=signal_a_worker)
    sender.start()
    started = time.monotonic()
    try:
        complete = engine.run()
    finally:
        sender.join()
        for signum in SIGNALS:
            signal.signal(signum, signal.default_int_handler)
    # WHEN the handler ran in the main thread THEN the run stopped after the pages in flight
    # (with a plain join the main thread woke only after the whole table was copied: 15 s)
    assert not complete
    assert time.monotonic() - started < 6


def test_cli_says_how_to_continue_when_the_budget_runs_out(
    clients: AwsClients, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = tables(clients, outbox_items(400))
    rc = backfill(settings, clients, "--workers", "1", "--page-size", "5", "--budget-seconds", "1")
    assert rc == ExitCode.INCOMPLETE
    assert "run `livemigrate backfill` again" in capsys.readouterr().err
    assert backfill(settings, clients, "--workers", "4", "--page-size", "50") == 0


@dataclass
class FakeContext:
    millis: int

    def get_remaining_time_in_millis(self) -> int:
        return self.millis


def test_lambda_handler_continues_across_invocations_until_complete(clients: AwsClients) -> None:
    settings = tables(clients, outbox_items(200))
    event = {"without_consumer": True, "margin_seconds": 0.5, "page_size": 10, "workers": 2}
    results = []
    for _ in range(30):
        results.append(invoke(event, FakeContext(1600), settings, clients))
        if results[-1]["complete"]:
            break
    assert results[-1]["complete"] is True
    assert len(results) >= 2  # 200 items do not fit in ~1 s of moto
    assert destination(clients.dynamodb, settings.destination_table) == expected(
        clients.dynamodb, settings.source_table
    )


def test_lambda_plan_has_a_segment_for_each_thread_of_each_invocation(
    clients: AwsClients,
) -> None:
    settings = tables(clients, outbox_items(20))
    # WHEN the state machine's Plan step asks for a Map of 3 invocations of 2 threads each
    event = {"action": "plan", "workers": 3, "threads": 2, "without_consumer": True}
    planned = invoke(event, FakeContext(60_000), settings, clients)
    # THEN the small table is cut in 6 segments, one for each thread that will claim one
    assert planned == {"workers": [0, 1, 2], "total_segments": 6}
    segments = list(plan.units(store_of(settings, clients), plan.SEG_PREFIX))
    assert len(segments) == 6
    # and unclaimed, in a plan not yet running: the Map's invocations claim them
    assert not any("lease_owner" in u.item for u in segments)
    assert plan.plan_state(store_of(settings, clients)) == plan.PLANNED


def test_rate_cap_from_control_table_slows_reads(clients: AwsClients) -> None:
    settings = tables(clients, outbox_items(120))
    migration = open_migration(settings, clients)
    # GIVEN an operator cap of 20 items/s in the control table (the setting says no cap)
    migration.store.put("RATES", {"read_rate": 20, "write_rate": 0})
    clock = FakeClock()
    engine = Engine(migration, Options(workers=1, page_size=20, total_segments=1), clock=clock)
    started = clock.now()
    assert engine.run() is True
    # THEN reading 120 items (one second of burst allowed) took at least 5 s of (fake) time
    assert engine.read_limiter.rate == 20
    assert clock.now() - started >= 5.0


def test_worker_processes_share_one_plan(
    clients: AwsClients, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = outbox_items(120)
    settings = tables(clients, items)
    # The children read the settings from the environment, like any worker process.
    for name, value in settings_env(settings).items():
        if name.startswith("LIVEMIGRATE_"):
            monkeypatch.setenv(name, value)
    rc = backfill(settings, clients, "--processes", "2", "--workers", "2", "--page-size", "20")
    # THEN the parent saw the plan completed by its children (it read nothing itself)
    assert rc == 0
    # and it planned a segment for each worker of each child (was: of one child, so the
    # second child's workers found nothing to claim in a small table)
    store = store_of(settings, clients)
    assert (store.get("PLAN") or {})["total_segments"] == 4
    # and it created them unclaimed: each was claimed once, by a child (a parent's claim
    # would have kept the children off it for a lease, then made their claim the second)
    assert [u.item["lease_counter"] for u in plan.units(store, plan.SEG_PREFIX)] == [1] * 4
    assert store_of(settings, clients).metrics()["items_read"] >= len(items)
    assert destination(clients.dynamodb, settings.destination_table) == expected(
        clients.dynamodb, settings.source_table
    )


def test_pages_read_again_count_as_already_copied_not_as_live_conflicts(
    clients: AwsClients,
) -> None:
    # GIVEN a table copied in full, with no live write at all (issue 12: true counters)
    items = outbox_items(60)
    settings = tables(clients, items)
    assert backfill(settings, clients, "--page-size", "20", "--total-segments", "2") == 0
    store = store_of(settings, clients)
    # WHEN every segment is read again from its start (as after a crash before a checkpoint)
    for unit in plan.units(store, plan.SEG_PREFIX):
        store.update(unit.sk, {"state": plan.PENDING, "checkpoint": None})
    store.update("PLAN", {"state": plan.RUNNING})
    assert backfill(settings, clients, "--page-size", "20", "--total-segments", "2") == 0
    # THEN the second copies are the backfill's own: none is counted as a live write's
    metrics = store.metrics()
    assert int(metrics["items_written"]) == 60
    assert int(metrics.get("items_already_copied", 0)) == 60
    assert int(metrics.get("superseded_by_live_write", 0)) == 0
    assert destination(clients.dynamodb, settings.destination_table) == expected(
        clients.dynamodb, settings.source_table
    )


def test_a_backfill_put_that_meets_a_live_write_or_a_tombstone_is_superseded(
    clients: AwsClients,
) -> None:
    settings = tables(clients, outbox_items(1))
    writer = open_migration(settings, clients).writer
    live = {"pk": {"S": "user|live"}, "sk": {"S": "x"}}
    assert writer.put_if_absent(live) is Outcome.WRITTEN
    assert writer.put_if_absent(live) is Outcome.ALREADY_COPIED
    writer.put_if_newer(live, pad_seq("12345678901234567890"))
    assert writer.put_if_absent(live) is Outcome.SUPERSEDED
    gone = {"pk": {"S": "user|gone"}, "sk": {"S": "x"}}
    writer.remove(gone, pad_seq("12345678901234567891"), tombstone=True)
    assert writer.put_if_absent(gone) is Outcome.SUPERSEDED
