"""Lease fences, renewal while applying, tombstone deadlines and outages of the consumer engine.

Real moto tables (source with its stream, destination, control) and the real applier; time is a
``FakeClock`` shared by the consumers, and stalls are scripted (a sink or a writer that blocks
until the test releases it), so nothing here depends on how fast the machine is.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError

from livemigrate import gates
from livemigrate.aws import AwsClients
from livemigrate.clock import FakeClock
from livemigrate.errors import ServiceUnreachable
from livemigrate.items import to_typed
from livemigrate.migration import Migration, open_migration
from livemigrate.records import StreamRecord
from livemigrate.verify import VerifyOptions, verify
from stream_consumer.applier import DeleteMode, DestinationApplier
from stream_consumer.engine import Consumer, ConsumerOptions, Tuning
from stream_consumer.metrics import Metrics
from stream_consumer.scripted import ScriptedStream, ScriptedTable
from stream_consumer.source import BotoShardSource, Page, ShardInfo, ShardSource
from stream_consumer.tombstones import FinalizeOptions, finalize_tombstones
from tests.services import create_table, scan_all, settings_for, unique

JAN = 1704067200
X = {"pk": "user|1", "sk": "x"}
WAIT = 60.0  # the longest any test waits for a thread to reach a point (never reached if ok)


@pytest.fixture
def migration(clients: AwsClients) -> Iterator[Migration]:
    source, dest = unique("src"), unique("dst")
    create_table(clients.dynamodb, source)
    create_table(clients.dynamodb, dest, stream=None)
    yield open_migration(settings_for(source, dest), clients)


class Stall:
    """A gate a worker thread stops at (``entered`` is set) until the test ``release``s it."""

    def __init__(self) -> None:
        self.armed = True
        self.entered = threading.Event()
        self.released = threading.Event()

    def __call__(self) -> None:
        if self.armed:
            self.armed = False
            self.entered.set()
            assert self.released.wait(WAIT), "the test never released the stall"

    def wait_entered(self) -> None:
        assert self.entered.wait(WAIT), "the worker never reached the stall"

    def release(self) -> None:
        self.released.set()


class StallingSink:
    """The real applier, entered only after the stall (a long GC pause, a slow transform)."""

    def __init__(self, inner: DestinationApplier, stall: Stall) -> None:
        self.inner = inner
        self.stall = stall

    def apply(self, records: Sequence[StreamRecord]) -> None:
        self.stall()
        self.inner.apply(records)

    def on_idle(self) -> None:
        self.inner.on_idle()


def consumer(
    migration: Migration,
    worker: str,
    clock: FakeClock,
    *,
    source: ShardSource | None = None,
    stall: Stall | None = None,
    lease_seconds: float = 10.0,
    **tuning: Any,
) -> Consumer:
    metrics = Metrics("source")
    applier = DestinationApplier.for_migration(
        migration, metrics, clock=clock, threads=2, refresh_seconds=0.0
    )
    sink: Any = applier if stall is None else StallingSink(applier, stall)
    if source is None:
        source = BotoShardSource(migration.clients.streams, str(migration.source.stream_arn))
    options = {"batch_size": 10, "poll_interval": 0.01, "heartbeat_interval": 600.0, **tuning}
    return Consumer(
        source,
        sink,
        ConsumerOptions(
            store=migration.store,
            name="source",
            worker_id=worker,
            lease_seconds=lease_seconds,
            clock=clock,
            dead_letters=migration.dead_letters,
            origin="stream",
            tuning=Tuning(**options),
        ),
        metrics=metrics,
    )


def in_thread(work: Callable[[], Any]) -> threading.Thread:
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def destination(migration: Migration) -> list[dict[str, Any]]:
    return list(scan_all(migration.clients.dynamodb, migration.settings.destination_table))


def shard_state(migration: Migration) -> dict[str, Any]:
    (state,) = [item for _, item in migration.store.query("SHARD#source#")]
    return state


def wait_for(what: str, condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def renewed_after(migration: Migration, before: float) -> Callable[[], bool]:
    return lambda: float(shard_state(migration)["lease_expires"]) > before


def source_put(migration: Migration, **extra: Any) -> None:
    item = to_typed({**X, "createdAt": JAN, **extra})
    migration.clients.dynamodb.put_item(TableName=migration.settings.source_table, Item=item)


def source_delete(migration: Migration) -> None:
    migration.clients.dynamodb.delete_item(
        TableName=migration.settings.source_table, Key=to_typed(X)
    )


def test_a_stalled_apply_past_its_lease_writes_nothing_after_the_takeover(
    migration: Migration,
) -> None:
    # GIVEN deletes are real (backfill complete) and consumer A's apply of "put X" stalls (the
    # whole process is paused: it does not even look at its lease while stalled)
    migration.store.put("PLAN", {"state": "complete", "completed_at": time.time()})
    source_put(migration)
    clock = FakeClock(time.time())
    stall = Stall()
    first = consumer(migration, "A", clock, stall=stall, apply_check_interval=3600.0)
    assert isinstance(first.sink, StallingSink)
    assert first.sink.inner.mode.decide().real  # A knows deletes are real before it stalls
    first.start()
    stalled = in_thread(first.step)
    stall.wait_entered()
    # WHEN the item is deleted, A's lease expires, and B takes the shard over and applies both
    source_delete(migration)
    clock.advance(11)
    second = consumer(migration, "B", clock)
    assert second.run(until_caught_up=True)
    assert destination(migration) == []
    after_takeover = shard_state(migration)["checkpoint"]
    # and then A resumes with its older put
    stall.release()
    stalled.join(WAIT)
    # THEN A's put was refused before it was sent: the item stays deleted, A let the shard go
    # without a checkpoint and without dead-lettering anything
    assert destination(migration) == []
    assert first.metrics.value("leases_expired_total") == 1
    assert first.metrics.value("records_applied_total") == 0
    assert not first.readers
    assert shard_state(migration)["checkpoint"] == after_takeover
    assert migration.dead_letters.count() == 0
    first.shutdown()


def test_a_long_apply_keeps_its_lease_by_renewing_while_it_runs(migration: Migration) -> None:
    # GIVEN consumer A's apply of "put X" takes longer than its lease (retries, throttling)
    migration.store.put("PLAN", {"state": "complete", "completed_at": time.time()})
    source_put(migration)
    clock = FakeClock(time.time())
    stall = Stall()
    first = consumer(migration, "A", clock, stall=stall, apply_check_interval=0.01)
    first.start()
    stalled = in_thread(first.step)
    stall.wait_entered()
    # WHEN time passes beyond the lease, a third of a lease at a time
    for _ in range(4):
        before = float(shard_state(migration)["lease_expires"])
        clock.advance(4)
        wait_for("a renewal", renewed_after(migration, before))
    # THEN the lease is still A's: B cannot take the shard
    second = consumer(migration, "B", clock)
    second.start()
    second.step()
    assert not second.readers
    # and A's writes, still inside its (extended) fence, land and are checkpointed
    stall.release()
    stalled.join(WAIT)
    assert first.metrics.value("leases_expired_total") == 0
    assert first.metrics.value("records_applied_total") == 1
    assert [i["pk"]["S"] for i in destination(migration)] == ["user|1"]
    assert shard_state(migration)["lease_owner"] == "A"
    second.shutdown()
    first.shutdown()


def test_a_tombstone_write_delayed_past_the_purge_is_refused_and_the_delete_is_redone(
    migration: Migration,
) -> None:
    # GIVEN the backfill is running (deletes are tombstones) and X is in the destination
    migration.store.put("PLAN", {"state": "running"})
    source_put(migration)
    clock = FakeClock(time.time())
    first = consumer(migration, "A", clock, lease_seconds=60.0)
    first.start()
    first.step()
    assert len(destination(migration)) == 1
    # WHEN the tombstone of X's delete is decided, then its write stalls (botocore retrying)
    stall = Stall()
    applier = first.sink
    assert isinstance(applier, DestinationApplier)
    writer = applier.writer
    remove = writer.remove

    def stalling_remove(
        key: Any,
        seq: str,
        *,
        tombstone: bool,
        owner: str | None = None,
        mark: bool | None = None,
    ) -> Any:
        if tombstone:
            stall()
        return remove(key, seq, tombstone=tombstone, owner=owner, mark=mark)

    writer.remove = stalling_remove  # type: ignore[method-assign]
    source_delete(migration)
    stalled = in_thread(first.step)
    stall.wait_entered()
    # while the backfill completes, another consumer switches to real deletes, and the purge
    # runs once the settle time has passed
    migration.store.put("PLAN", {"state": "complete", "completed_at": time.time()})
    other = DeleteMode(migration.backfill_complete, migration.store, "source", clock, 0.0)
    assert other.decide().real
    clock.advance(16)
    finalize_tombstones(migration, clock, FinalizeOptions(settle_seconds=15.0, poll_seconds=1.0))
    stall.release()
    stalled.join(WAIT)
    # THEN the late tombstone was refused (its decision had expired), the batch was applied
    # again with real deletes, and the destination holds neither X nor a tombstone
    assert first.metrics.value("tombstone_retries_total") == 1
    assert destination(migration) == []
    assert first.metrics.value("tombstones_written_total") == 0
    assert migration.dead_letters.count() == 0
    first.shutdown()


class FlakySource:
    """A shard source whose endpoint refuses connections while ``down(monotonic)`` is true."""

    def __init__(self, inner: ScriptedStream, down: Callable[[float], bool]) -> None:
        self.inner = inner
        self.down = down

    @property
    def stream_arn(self) -> str:
        return self.inner.stream_arn

    def _check(self) -> None:
        if self.down(self.inner.clock.monotonic()):
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1")

    def list_shards(self) -> list[ShardInfo]:
        self._check()
        return self.inner.list_shards()

    def iterator(self, shard_id: str, after: str | None) -> str:
        self._check()
        return self.inner.iterator(shard_id, after)

    def get_records(self, iterator: str, limit: int) -> Page:
        self._check()
        return self.inner.get_records(iterator, limit)


class DegradedWatch:
    """Records CONSUMER#source's degraded_since each time the engine backs off."""

    def __init__(self, target: Consumer) -> None:
        self.seen: list[Any] = []
        self.degraded: list[float] = []
        original = target._sleep

        def sleep(seconds: float) -> None:
            item = target.store.get(target.consumer_sk) or {}
            self.seen.append(item.get("degraded_since"))
            self.degraded.append(target.metrics.value("degraded"))
            original(seconds)

        target._sleep = sleep  # type: ignore[method-assign]


def test_an_endpoint_outage_is_ridden_out_degraded_and_a_long_one_ends_the_run(
    migration: Migration,
) -> None:
    clock = FakeClock(time.time())
    stream = ScriptedStream(clock, shards=1)
    table = ScriptedTable(stream)
    seqs = [
        table.put(to_typed({"pk": f"user|{n}", "sk": "x", "createdAt": JAN + n})) for n in range(20)
    ]
    # GIVEN the stream endpoint refuses connections for the first 120 s (fake time)
    flaky = FlakySource(stream, lambda now: now < 120.0)
    first = consumer(migration, "A", clock, source=flaky, outage_seconds=300.0)
    watch = DegradedWatch(first)
    # WHEN the consumer runs through it
    assert first.run(until_caught_up=True)
    # THEN it carried on when the endpoint answered again: everything applied, nothing
    # dead-lettered; it was degraded meanwhile (metric and CONSUMER item), and is no longer
    assert first.metrics.value("records_applied_total") == 20
    assert len(destination(migration)) == 20
    assert migration.dead_letters.count() == 0
    assert first.metrics.value("outage_retries_total") >= 3
    assert 1.0 in watch.degraded
    assert any(since is not None for since in watch.seen)
    assert first.metrics.value("degraded") == 0
    assert "degraded_since" not in (migration.store.get("CONSUMER#source") or {})
    # GIVEN an outage longer than outage_seconds: the run ends with ServiceUnreachable
    for n in range(20, 25):
        table.put(to_typed({"pk": f"user|{n}", "sk": "x", "createdAt": JAN + n}))
    start = clock.monotonic()
    again = consumer(migration, "B", clock, source=FlakySource(stream, lambda _: True))
    with pytest.raises(ServiceUnreachable, match="has not answered for"):
        again.run(until_caught_up=True)
    assert clock.monotonic() - start >= 300.0
    # its position is kept: what was applied stays checkpointed
    assert str(shard_state(migration)["checkpoint"]).lstrip("0") == seqs[-1]


def test_a_recreated_source_stream_is_recorded_and_blocks_the_cutover_until_verified(
    migration: Migration,
) -> None:
    clock = FakeClock(time.time())
    old = ScriptedStream(clock, arn="arn:aws:dynamodb:scripted:0:table/t/stream/old")
    consumer(migration, "A", clock, source=old).start()
    assert "stream_changed_at" not in (migration.store.get("CONSUMER#source") or {})
    # GIVEN a verification passed, THEN the stream is re-created (changes in between are lost)
    migration.store.put("VERIFY", {"passed": True, "at": clock.now(), "tombstones": 0})
    clock.advance(5)
    new = ScriptedStream(clock, arn="arn:aws:dynamodb:scripted:0:table/t/stream/new")
    # WHEN a consumer starts on the new stream
    consumer(migration, "B", clock, source=new).start()
    # THEN the change is recorded, and the loss gate refuses until a later verification passes
    held = migration.store.get("CONSUMER#source") or {}
    assert float(held["stream_changed_at"]) == pytest.approx(clock.now())
    assert held["previous_stream_arn"] == old.stream_arn
    snapshot = gates.read_snapshot(migration.store, now=clock.now())
    gate = gates.loss_gate(snapshot, gates.Policy())
    assert not gate.met and "re-created" in gate.why
    migration.store.put("VERIFY", {"passed": True, "at": clock.now() + 1, "tombstones": 0})
    snapshot = gates.read_snapshot(migration.store, now=clock.now() + 2)
    assert gates.loss_gate(snapshot, gates.Policy()).met


def test_verification_counts_tombstones_for_the_gate_but_not_deletes_in_flight(
    migration: Migration,
) -> None:
    # GIVEN a destination holding a live item, a tombstone, and an item marked by a delete in
    # flight (the consumer marks, then deletes)
    table = migration.settings.destination_table
    ddb = migration.clients.dynamodb
    live = {"pk": "p|2024-01", "sk": "a", "createdAt": JAN}
    ddb.put_item(TableName=table, Item=to_typed({**live, "_lm_seq": "1"}))
    ddb.put_item(TableName=table, Item=to_typed({"pk": "p", "sk": "t", "_lm_tomb": True}))
    ddb.put_item(TableName=table, Item=to_typed({"pk": "p", "sk": "m", "_lm_del": True}))
    # WHEN a verification runs
    report = verify(migration, VerifyOptions(recheck_wait=0.0, recheck_rounds=1), search=False)
    # THEN it counted the one tombstone, and recorded it for the tombstone gate
    assert report.tombstones == 1
    held = migration.store.get("VERIFY") or {}
    assert held["tombstones"] == 1


class CountingSink:
    def __init__(self, inner: DestinationApplier) -> None:
        self.inner = inner
        self.applies = 0

    def apply(self, records: Sequence[StreamRecord]) -> None:
        self.applies += 1
        self.inner.apply(records)


def test_a_checkpoint_that_fails_after_an_apply_is_retried_not_skipped(
    migration: Migration,
) -> None:
    clock = FakeClock(time.time())
    stream = ScriptedStream(clock, shards=1)
    table = ScriptedTable(stream)
    seqs = [
        table.put(to_typed({"pk": f"user|{n}", "sk": "x", "createdAt": JAN + n})) for n in range(5)
    ]
    first = consumer(migration, "A", clock, source=stream)
    assert isinstance(first.sink, DestinationApplier)
    sink = CountingSink(first.sink)
    first.sink = sink
    # GIVEN the control table fails the first checkpoint after the batch was applied
    checkpoint = first.leases.checkpoint
    failures = [EndpointConnectionError(endpoint_url="http://127.0.0.1:1")]

    def flaky(*args: Any, **kwargs: Any) -> None:
        if failures and "checkpoint" in args[-1]:
            raise failures.pop()
        checkpoint(*args, **kwargs)

    first.leases.checkpoint = flaky  # type: ignore[method-assign]
    # WHEN the consumer runs
    assert first.run(until_caught_up=True)
    # THEN the checkpoint was written after a back-off, the batch applied once, nothing lost
    assert not failures
    assert sink.applies == 1
    assert first.metrics.value("records_applied_total") == 5
    assert str(shard_state(migration)["checkpoint"]).lstrip("0") == seqs[-1]
