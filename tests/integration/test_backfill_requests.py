"""Control-table requests a backfill makes, against moto's server (issue 18: each one costs
as much as a put on the emulator, and request units on AWS)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from backfill import plan
from backfill.worker import Engine, Options
from livemigrate import status
from livemigrate.aws import AwsClients
from livemigrate.clock import Clock, FakeClock
from livemigrate.config import Settings
from livemigrate.keys import PLAN
from livemigrate.migration import open_migration
from tests.services import create_table, settings_for, unique
from tests.support.backfill import destination, expected, fill, outbox_items
from tests.support.backfill import tables as support_tables

pytestmark = pytest.mark.integration


def tables(clients: AwsClients, count: int) -> Settings:
    source, dest = unique("src"), unique("dst")
    create_table(clients.dynamodb, source)
    create_table(clients.dynamodb, dest, stream=None)
    fill(clients.dynamodb, source, outbox_items(count))
    return settings_for(source, dest)


@contextmanager
def control_requests(clients: AwsClients, table: str) -> Iterator[Counter[str]]:
    """Requests sent to the control table ``table`` within the block, by operation."""
    seen: Counter[str] = Counter()

    def count(params: dict[str, Any], model: Any, **_: Any) -> None:
        # A transaction names its tables in its actions.
        actions = [a for action in params.get("TransactItems", []) for a in action.values()]
        if table in [params.get("TableName"), *(a.get("TableName") for a in actions)]:
            seen[model.name] += 1

    events = clients.dynamodb.meta.events
    events.register("before-parameter-build.dynamodb", count, unique_id="test-control-requests")
    try:
        yield seen
    finally:
        events.unregister("before-parameter-build.dynamodb", unique_id="test-control-requests")


def test_a_unit_of_one_page_costs_two_writes_and_a_run_that_planned_lists_nothing(
    clients: AwsClients,
) -> None:
    # GIVEN 4 segments of one page each, for one worker
    settings = tables(clients, 40)
    options = Options(workers=1, page_size=100, total_segments=4)
    migration = open_migration(settings, clients)
    # WHEN it backfills them
    with control_requests(clients, settings.control_table) as seen:
        assert Engine(migration, options).run()
    # THEN each unit costs a claim and a checkpoint that carries its counters and releases
    # the lease (was 3: a counter update of its own; before that 5: a second counter update,
    # a release, a read-back of the claim), but the first unit was created claimed for the
    # worker, in a plan created running; beyond them: the plan's completion and the run's
    # last counters (was: the mark to running too; before that the plan three times)
    assert seen["UpdateItem"] == (4 - 1) + 4 + 1 + 1, seen
    # and the plan and its 4 segments are written in one transaction (was 5 puts)
    assert (seen["TransactWriteItems"], seen["PutItem"]) == (1, 0), seen
    # and the units are never listed: the process that created them claims them from what
    # it wrote, and completes the plan from what it finished (was 2: a last listing; before
    # that 4: a first listing, and before that 7 and 17)
    assert seen["Query"] == 0, seen
    # and the plan is not read before it is written: a put if absent returns the held one
    assert seen["GetItem"] == 1, seen  # the live rates; PLAN is not read
    assert destination(clients.dynamodb, settings.destination_table) == expected(
        clients.dynamodb, settings.source_table
    )


def test_idle_workers_do_not_poll_while_siblings_hold_the_units(clients: AwsClients) -> None:
    # GIVEN one unit of several pages for three workers that would poll every 20 ms
    settings = tables(clients, 60)
    options = Options(workers=3, page_size=10, total_segments=1, idle_poll_seconds=0.02)
    migration = open_migration(settings, clients)
    # WHEN one worker copies it while the other two wait
    with control_requests(clients, settings.control_table) as seen:
        assert Engine(migration, options).run()
    # THEN the idle ones listed the units at most twice each (once more when their first
    # listing came before the claim) and were woken by the completion: a unit held in this
    # process is left only with a notice (was: a listing per poll and worker)
    assert seen["Query"] <= 1 + 3 * 2 + 2 * 2 + 2 + 2
    assert destination(clients.dynamodb, settings.destination_table) == expected(
        clients.dynamodb, settings.source_table
    )


class Killed(BaseException):
    """The process dies (SIGKILL) right after a request it sent was acknowledged."""


def run_until_killed(
    clients: AwsClients,
    engine: Engine,
    operation: str,
    dies: Callable[[dict[str, Any]], bool],
) -> None:
    """Run ``engine`` until it dies (``Killed``) right after a request of ``operation``
    whose parameters ``dies`` picks was acknowledged."""
    sent: list[dict[str, Any]] = []  # the parameters of the request of ``operation`` in flight

    def remember(params: dict[str, Any], model: Any, **_: Any) -> None:
        if model.name == operation:
            sent[:] = [params]

    def die(**_: Any) -> None:
        if sent and dies(sent[0]):
            raise Killed

    events = clients.dynamodb.meta.events
    events.register("before-parameter-build.dynamodb", remember, unique_id="test-params")
    events.register(f"after-call.dynamodb.{operation}", die, unique_id="test-kill")
    try:
        with pytest.raises(Killed):
            engine.run()
    finally:
        events.unregister("before-parameter-build.dynamodb", unique_id="test-params")
        events.unregister(f"after-call.dynamodb.{operation}", unique_id="test-kill")


def test_a_kill_right_after_a_checkpoint_still_leaves_the_page_counted(
    clients: AwsClients,
) -> None:
    # GIVEN one segment of 3 pages, whose worker dies right after its first checkpoint landed
    settings = tables(clients, 30)
    options = Options(workers=1, page_size=10, total_segments=1, lease_seconds=2.0)
    migration = open_migration(settings, clients)
    kills: list[str] = []

    def first_checkpoint(params: dict[str, Any]) -> bool:
        names = params.get("ExpressionAttributeNames", {}).values()
        if not kills and params["Key"]["sk"]["S"].startswith("SEG#") and "checkpoint" in names:
            kills.append(params["Key"]["sk"]["S"])
            return True
        return False

    run_until_killed(clients, Engine(migration, options), "UpdateItem", first_checkpoint)
    assert kills, "the worker died after a checkpoint"
    # WHEN the next run takes the segment over once the dead worker's lease expired
    assert Engine(migration, options).run()
    # THEN every item was counted as read at least once: the page before the kill was counted
    # before its checkpoint (counted after it, the kill lost the count: items_read < 30)
    assert int(migration.store.metrics()["items_read"]) >= 30
    assert destination(clients.dynamodb, settings.destination_table) == expected(
        clients.dynamodb, settings.source_table
    )


def test_request_units_ride_on_unit_checkpoints_and_status_counts_each_once(
    clients: AwsClients, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN checkpoints that carry the request units spent every time (default: every 10 s)
    monkeypatch.setattr("backfill.worker.COSTS_EVERY_SECONDS", 0.0)
    settings = tables(clients, 40)
    migration = open_migration(settings, clients)
    assert migration.store.ledger is not None
    # WHEN 4 segments of one page each are backfilled
    assert Engine(migration, Options(workers=1, page_size=100, total_segments=4)).run()
    spent = {
        role: sum(op["requests"] for op in ops.values())
        for role, ops in migration.store.ledger.by_role().items()
    }
    # THEN the units carry some of the units spent and METRICS the rest: status counts every
    # request the process made for this migration once, but the last update (which cannot
    # carry itself)
    shown = status.collect(migration.store)["requests"]["by_role"]
    assert {role: shown[role]["requests"] for role in spent} == {
        **spent,
        "control": spent["control"] - 1,
    }
    units = [item for _, item in migration.store.query("SEG#")]
    assert any("cost.destination.PutItem.requests" in item for item in units)
    # and the backfill's counters are the units' sums
    assert int(migration.store.metrics()["items_read"]) == 40


def counted_run(clients: AwsClients, engine: Engine, hook: Callable[..., None]) -> Counter[str]:
    """Run ``engine`` to completion with ``hook`` seeing every request's parameters before
    it is sent; returns the control-table requests it made, by operation."""
    events = clients.dynamodb.meta.events
    events.register("before-parameter-build.dynamodb", hook, unique_id="test-hook")
    try:
        with control_requests(clients, engine.migration.settings.control_table) as seen:
            assert engine.run()
    finally:
        events.unregister("before-parameter-build.dynamodb", unique_id="test-hook")
    return seen


def _finishes(params: dict[str, Any]) -> bool:
    """Whether an UpdateItem request finishes a unit (its checkpoint sets the state done)."""
    values = params.get("ExpressionAttributeValues", {}).values()
    return params["Key"]["sk"]["S"].startswith("SEG#") and {"S": "done"} in values


def test_workers_done_while_a_sibling_works_do_not_list_the_units(clients: AwsClients) -> None:
    # GIVEN two one-page segments for two workers polling every 20 ms, where segment 1's read
    # waits until segment 0 is finished and 0.3 s more have passed
    settings = tables(clients, 40)
    options = Options(workers=2, page_size=100, total_segments=2, idle_poll_seconds=0.02)
    migration = open_migration(settings, clients)
    first_done = threading.Event()

    def hold_segment_1(params: dict[str, Any], model: Any, **_: Any) -> None:
        if model.name == "Scan" and params.get("Segment") == 1:
            assert first_done.wait(10)
            time.sleep(0.3)
        elif model.name == "UpdateItem" and _finishes(params):
            first_done.set()

    # WHEN they backfill them
    seen = counted_run(clients, Engine(migration, options), hold_segment_1)
    # THEN the units are never listed: the idle worker knew that its sibling held the only
    # unit left, and the plan is completed from the units finished here (was: a last listing
    # to complete it; before that a listing as the worker went idle and one per poll while it
    # waited, 2 queries each)
    assert seen["Query"] == 0, seen
    assert destination(clients.dynamodb, settings.destination_table) == expected(
        clients.dynamodb, settings.source_table
    )


def test_workers_that_finish_together_complete_the_plan_once(clients: AwsClients) -> None:
    # GIVEN two one-page segments for two workers whose last checkpoints are answered
    # together, and whose completions of the plan wait for each other (at most 2 s)
    settings = tables(clients, 40)
    options = Options(workers=2, page_size=100, total_segments=2)
    migration = open_migration(settings, clients)
    finished, completing = threading.Barrier(2, timeout=5), threading.Barrier(2, timeout=2)

    def together(params: dict[str, Any], model: Any, **_: Any) -> None:
        if model.name != "UpdateItem":
            return
        if _finishes(params):
            finished.wait()
        elif params["Key"]["sk"]["S"] == "PLAN" and ":complete" in str(params):
            with contextlib.suppress(threading.BrokenBarrierError):
                completing.wait()

    # WHEN they backfill them
    seen = counted_run(clients, Engine(migration, options), together)
    # THEN the plan is completed by one of them: each unit costs its last checkpoint (both
    # were created claimed for the two workers), the plan its completion, the run's counters
    # one, and nothing reads the plan back (was: a completion each, the second refused and
    # followed by a read of PLAN)
    assert seen["UpdateItem"] == 2 + 1 + 1, seen
    assert seen["GetItem"] == 1, seen  # the live rates


def test_a_plan_is_written_whole_and_a_held_one_is_read_in_the_same_request(
    clients: AwsClients,
) -> None:
    # GIVEN a plan of 4 segments written by one process
    settings = tables(clients, 10)
    options = Options(workers=1, total_segments=4)
    migration = open_migration(settings, clients)
    assert Engine(migration, options).plan() == 4
    # WHEN a second process, asking for 6 segments, plans the same migration
    with control_requests(clients, settings.control_table) as seen:
        planned = plan.ensure_plan(migration.store, 6)
    # THEN it finds the first plan in its one (refused) transaction: no read, no put
    assert planned.total_segments == 4 and planned.created is None
    assert seen == Counter({"TransactWriteItems": 1}), seen
    # and WHEN a plan's units exist without its PLAN item (a plan half-written one unit at a
    # time), planning writes the PLAN item and leaves the units as they are
    migration.store.delete(PLAN)
    migration.store.update(plan.seg_sk(0), {"mark": "kept"}, returns=False)
    planned = plan.ensure_plan(migration.store, 4)
    assert planned.created is None and planned.total_segments == 4
    held = migration.store.get(PLAN)
    assert held is not None and held["segments_written"] and held["state"] == plan.PLANNED
    assert [u.item.get("mark") for u in plan.list_units(migration.store)][:2] == ["kept", None]
    assert Engine(migration, options).run()


def test_a_segment_taken_over_from_a_dead_splitter_is_not_completed_without_its_splits(
    clients: AwsClients,
) -> None:
    # GIVEN a one-segment plan, half of whose 200 items share one key, made by a process that
    # will claim the segment from what it wrote (no listing); and a worker of another process
    # that split the hot key and died right after, before its jump was saved
    settings = support_tables(clients, outbox_items(200, hot_share=0.5))
    options = Options(
        workers=1, page_size=20, total_segments=1, lease_seconds=1.0, hot_pages=2, hot_min_items=40
    )
    migration = open_migration(settings, clients)
    planner = Engine(migration, options)
    planner.plan()
    run_until_killed(
        clients, Engine(migration, options), "TransactWriteItems", lambda p: "SPLIT#" in str(p)
    )
    splits = list(plan.units(migration.store, plan.SPLIT_PREFIX))
    assert splits and not any(u.done for u in splits)
    time.sleep(options.lease_seconds)  # the dead worker's lease expires
    # WHEN the planner's worker takes the segment over and finishes it (jumping past the key)
    assert planner.run()
    # THEN the plan was completed only after the splits were copied too: the segment was
    # taken over, so the process listed the units before completing (a process completes the
    # plan without listing only when it created, claimed and finished every unit itself)
    assert all(u.done for u in plan.units(migration.store, plan.SPLIT_PREFIX))
    assert destination(clients.dynamodb, settings.destination_table) == expected(
        clients.dynamodb, settings.source_table
    )


def planned_claimed(
    clients: AwsClients, count: int, options: Options, clock: Clock | None = None
) -> tuple[Settings, Engine]:
    """A source of ``count`` items and an engine that planned it with its first units
    claimed for its own workers (as a process that runs alone does)."""
    settings = tables(clients, count)
    engine = Engine(open_migration(settings, clients), options, clock=clock)
    engine.plan(claim=True)
    return settings, engine


def test_a_unit_created_claimed_is_claimed_again_once_its_fence_has_passed(
    clients: AwsClients,
) -> None:
    # GIVEN a plan created with its one segment claimed for this process's worker, which
    # starts only after that claim's fence has passed (lease 2 s, fence 2/3 s before it)
    clock = FakeClock()
    options = Options(workers=1, page_size=10, total_segments=1, lease_seconds=2.0)
    settings, engine = planned_claimed(clients, 30, options, clock)
    migration = engine.migration
    created = migration.store.get(plan.seg_sk(0)) or {}
    assert created["lease_counter"] == 1 and created["lease_owner"].endswith("-0")
    assert plan.plan_state(migration.store) == plan.RUNNING
    clock.advance(1.5)
    scans: list[str] = []

    def count_scans(params: dict[str, Any], model: Any, **_: Any) -> None:
        if model.name == "Scan":
            scans.append(params["TableName"])

    # WHEN it runs
    seen = counted_run(clients, engine, count_scans)
    # THEN it claimed the segment again before reading it, and read each of its 3 pages
    # once: the unit was not read with a dead fence and dropped at its first write
    assert (migration.store.get(plan.seg_sk(0)) or {})["lease_counter"] == 2
    assert len(scans) == 3, scans
    assert seen["UpdateItem"] == 1 + 3 + 1 + 1, seen  # claim, checkpoints, completion, counters
    assert destination(clients.dynamodb, settings.destination_table) == expected(
        clients.dynamodb, settings.source_table
    )


def test_units_created_claimed_for_a_run_that_stopped_first_are_released(
    clients: AwsClients,
) -> None:
    # GIVEN a plan created with its two segments claimed for this process's two workers
    options = Options(workers=2, page_size=10, total_segments=2)
    _, engine = planned_claimed(clients, 20, options)
    migration = engine.migration
    # WHEN the run is stopped before it starts (Ctrl-C between planning and running)
    engine.stop()
    assert not engine.run()
    # THEN neither segment is left leased to a worker that never took it up: the next run
    # starts on them now, not once their 30 s leases have expired
    units = list(plan.units(migration.store, plan.SEG_PREFIX))
    assert len(units) == 2 and not any("lease_owner" in u.item for u in units)
    assert not any(u.done for u in units)
