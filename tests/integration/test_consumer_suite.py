"""One consumer test suite, run against moto's stream, the scripted splitting stream AND
moto's Kinesis (the source table's stream copied into a Kinesis stream by the bridge, with
duplicates and reordering on).

moto has one shard and never splits; the scripted stream splits shards (closed parents,
children, several generations); the Kinesis stream has two shards, and its records arrive out of
order and more than once. The destination and
control tables are moto in every case, and the comparison is independent: scan the source, run
the transform here, scan the destination.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest

from livemigrate.aws import AwsClients
from livemigrate.clock import Clock, FakeClock, SystemClock
from livemigrate.deadletters import DeadLetters, Origin
from livemigrate.items import key_id, to_plain, to_typed
from livemigrate.migration import Migration, open_migration
from livemigrate.records import StreamRecord
from livemigrate.transform import Transformer, load_transform
from livemigrate.versioning import user_attributes
from stream_consumer.applier import DestinationApplier
from stream_consumer.engine import Consumer, ConsumerOptions, Tuning
from stream_consumer.kinesis.bridge import Chaos, StreamBridge, create_stream
from stream_consumer.kinesis.records import pad_position
from stream_consumer.kinesis.source import KinesisShardSource
from stream_consumer.leases import shard_sk
from stream_consumer.metrics import Metrics
from stream_consumer.scripted import ScriptedStream, ScriptedTable
from stream_consumer.source import BotoShardSource, ShardSource
from stream_consumer.tombstones import (
    FinalizeOptions,
    NotSwitched,
    finalize_tombstones,
    switched_at,
    tombstones_purged,
)
from tests.services import create_table, scan_all, settings_for, unique

JAN = 1704067200  # 2024-01-01T00:00:00Z
FEB = 1706745600  # 2024-02-01T00:00:00Z
OUTBOX = "section-outbox|docket"
FAST = Tuning(
    batch_size=25,
    poll_interval=0.02,
    discover_interval=0.1,
    heartbeat_interval=0.1,
    max_attempts=3,
    backoff_base=0.01,
    backoff_cap=0.05,
)


class RecordingSink:
    """Wraps a sink and remembers the order records were handed over (shard, sequence)."""

    def __init__(self, inner: DestinationApplier) -> None:
        self.inner = inner
        self.seen: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def apply(self, records: Sequence[StreamRecord]) -> None:
        self.inner.apply(records)
        with self._lock:
            self.seen.extend((r.shard_id, r.sequence_number) for r in records)

    def on_idle(self) -> None:
        self.inner.on_idle()


@dataclass
class World:
    kind: str
    clients: AwsClients
    migration: Migration
    source: ShardSource
    table: ScriptedTable | None = None
    stream: ScriptedStream | None = None
    sinks: list[RecordingSink] = field(default_factory=list)
    bridge: StreamBridge | None = None

    @property
    def source_table(self) -> str:
        return self.migration.settings.source_table

    def put(self, item: dict[str, Any]) -> None:
        typed = to_typed(item)
        if self.table is not None:
            self.table.put(typed)
        else:
            self.clients.dynamodb.put_item(TableName=self.source_table, Item=typed)

    def delete(self, pk: str, sk: str) -> None:
        key = {"pk": {"S": pk}, "sk": {"S": sk}}
        if self.table is not None:
            self.table.delete(key)
        else:
            self.clients.dynamodb.delete_item(TableName=self.source_table, Key=key)

    def split_all(self) -> None:
        """A new generation: every open scripted shard splits (moto cannot: no-op; moto's
        Kinesis SplitShard keeps routing puts to the closed parent, so the Kinesis stream does
        not split either: lineage is the scripted stream's part)."""
        if self.stream is not None:
            for shard in self.stream.open_shards():
                self.stream.split(shard)

    def stream_records(self, changes: int) -> int:
        """How many stream records ``changes`` source changes made (Kinesis: duplicates)."""
        return changes if self.bridge is None else self.bridge.put

    def source_items(self) -> list[dict[str, Any]]:
        if self.table is not None:
            return [to_plain(i) for i in self.table.scan()]
        return [to_plain(i) for i in scan_all(self.clients.dynamodb, self.source_table)]

    def consumer(
        self,
        worker: str,
        *,
        clock: Clock | None = None,
        lease_seconds: float = 5.0,
        tuning: Tuning = FAST,
        dead_letters: DeadLetters | None = None,
    ) -> Consumer:
        clock = clock or SystemClock()
        if self.bridge is not None:
            self.bridge.pump()  # the streaming destination delivers what was written so far
        metrics = Metrics("source")
        applier = DestinationApplier.for_migration(
            self.migration,
            metrics,
            clock=clock,
            threads=4,
            refresh_seconds=0.0,
            # The scripted world's source items live in the ScriptedTable, not in moto.
            source=None if self.table is None else self.table.get,
        )
        sink = RecordingSink(applier)
        self.sinks.append(sink)
        return Consumer(
            self.source,
            sink,
            ConsumerOptions(
                store=self.migration.store,
                name="source",
                worker_id=worker,
                lease_seconds=lease_seconds,
                clock=clock,
                dead_letters=dead_letters or self.migration.dead_letters,
                origin="stream",
                tuning=tuning,
            ),
            metrics=metrics,
        )

    def backfill_write(self, items: list[dict[str, Any]]) -> None:
        """What the backfill does with items it read: transform, put-if-absent."""
        for item in items:
            source_key = to_typed({"pk": item["pk"], "sk": item["sk"]})
            for out in self.migration.transformer.run(item):
                self.migration.writer.put_if_absent(out, source_key)

    def complete_backfill(self) -> None:
        self.migration.store.put("PLAN", {"state": "complete", "completed_at": time.time()})


def expected(migration: Migration, items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The transform run here, independently of the consumer."""
    transformer = Transformer(
        load_transform(migration.settings.transform), ("pk", "sk"), {"pk": "S", "sk": "S"}
    )
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        for typed in transformer.run(item):
            plain = to_plain(typed)
            out[key_id({"pk": plain["pk"], "sk": plain["sk"]})] = plain
    return out


def destination(world: World) -> tuple[dict[str, dict[str, Any]], int]:
    """Destination items without livemigrate's attributes, and the number of tombstones."""
    items: dict[str, dict[str, Any]] = {}
    tombs = 0
    for raw in scan_all(world.clients.dynamodb, world.migration.settings.destination_table):
        plain = to_plain(raw)
        if plain.get("_lm_tomb"):
            tombs += 1
            continue
        clean = user_attributes(plain)
        items[key_id({"pk": plain["pk"], "sk": plain["sk"]})] = clean
    return items, tombs


def item(n: int, *, outbox: bool = True, created: int = JAN, **extra: Any) -> dict[str, Any]:
    pk = OUTBOX if outbox else f"user|{n % 7}"
    return {"pk": pk, "sk": f"i{n:04d}", "createdAt": Decimal(created + n), "n": n, **extra}


# Every third record is put twice and records are shuffled within windows of eight.
CHAOS = Chaos(duplicate_every=3, reorder_window=8, seed=14)


def kinesis_world(clients: AwsClients, source: str, dest: str) -> World:
    assert clients.kinesis is not None
    stream = unique("kin")
    create_stream(clients.kinesis, stream, shards=2)
    # The bridge pumps before each consumer starts: a margin of 0 is exact here.
    settings = settings_for(
        source, dest, change_source="kinesis", kinesis_stream=stream, kinesis_delivery_margin=0
    )
    migration = open_migration(settings, clients)
    arn = migration.source.stream_arn
    assert arn is not None
    bridge = StreamBridge(clients.streams, clients.kinesis, arn, stream, source, chaos=CHAOS)
    reader = KinesisShardSource(clients.kinesis, stream)
    return World("kinesis", clients, migration, reader, bridge=bridge)


@pytest.fixture(params=["moto", "scripted", "kinesis"])
def world(request: pytest.FixtureRequest, clients: AwsClients) -> Iterator[World]:
    source, dest = unique("src"), unique("dst")
    create_table(clients.dynamodb, source)
    create_table(clients.dynamodb, dest, stream=None)
    if request.param == "kinesis":
        yield kinesis_world(clients, source, dest)
        return
    migration = open_migration(settings_for(source, dest), clients)
    if request.param == "moto":
        arn = migration.source.stream_arn
        assert arn is not None
        yield World("moto", clients, migration, BotoShardSource(clients.streams, arn))
    else:
        stream = ScriptedStream(shards=2)
        yield World("scripted", clients, migration, stream, ScriptedTable(stream), stream)


def assert_parents_before_children(world: World) -> None:
    """Every record of a parent shard was applied before any record of its children."""
    if world.stream is None:
        return
    merged = list(itertools.chain.from_iterable(s.seen for s in world.sinks))
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for i, (shard, _) in enumerate(merged):
        first.setdefault(shard, i)
        last[shard] = i
    checked = 0
    for child, start in first.items():
        for parent in world.stream.parents_of(child):
            if parent in last:
                assert last[parent] < start, f"{child} read before parent {parent} ended"
                checked += 1
    assert checked >= 2, "the scenario must exercise several parent/child pairs"


def run_to_caught_up(consumer: Consumer) -> None:
    assert consumer.run(until_caught_up=True)


def test_changes_converge_and_tombstones_block_late_backfill_puts(world: World) -> None:
    # GIVEN a seeded source, read by the backfill before any change (a stale snapshot)
    for n in range(40):
        world.put(item(n, outbox=n % 2 == 0))
    world.split_all()
    snapshot = world.source_items()
    # WHEN items are updated (some move to another month: another destination key), deleted
    # (items the backfill has read but not written yet) and inserted
    for n in range(0, 20, 2):
        world.put(item(n, created=FEB, note="moved"))
    for n in range(20, 30):
        world.delete(OUTBOX if n % 2 == 0 else f"user|{n % 7}", f"i{n:04d}")
    world.split_all()
    for n in range(40, 50):
        world.put(item(n, outbox=n % 3 == 0))
    world.backfill_write(snapshot[: len(snapshot) // 2])  # before the consumer catches up
    run_to_caught_up(world.consumer("w1"))
    # a late backfill put of deleted / moved items must fail on the tombstones
    world.backfill_write(snapshot[len(snapshot) // 2 :])
    tombs_before = destination(world)[1]
    assert tombs_before >= 10
    world.split_all()
    for n in range(30, 35):
        world.put(item(n, outbox=True, created=FEB, note="late"))
    world.delete(OUTBOX, "i0000")
    world.complete_backfill()
    run_to_caught_up(world.consumer("w2"))
    # THEN after finalisation the destination equals the transformed source exactly
    purged = finalize_tombstones(
        world.migration, SystemClock(), FinalizeOptions(settle_seconds=0.0)
    )
    assert purged >= 10
    assert tombstones_purged(world.migration)
    held, tombs = destination(world)
    assert tombs == 0
    assert held == expected(world.migration, world.source_items())
    assert world.migration.dead_letters.count() == 0
    assert_parents_before_children(world)


def test_finalisation_switches_to_real_deletes_when_no_consumer_saw_the_backfill_quiet(
    world: World,
) -> None:
    # GIVEN deletes applied as tombstones by a consumer that stopped before the backfill ended
    for n in range(10):
        world.put(item(n))
    for n in range(4):
        world.delete(OUTBOX, f"i{n:04d}")
    run_to_caught_up(world.consumer("w1"))
    assert destination(world)[1] == 4
    store = world.migration.store
    # WHEN finalisation runs while the backfill is incomplete, it waits and records nothing
    with pytest.raises(NotSwitched):
        finalize_tombstones(
            world.migration, SystemClock(), FinalizeOptions(timeout_seconds=0.3, poll_seconds=0.05)
        )
    assert switched_at(store, "source") is None
    # WHEN the backfill completes (quiet a second later) with no consumer running
    quiet_at = time.time() + 1.0
    store.put("PLAN", {"state": "complete", "completed_at": time.time(), "quiet_at": quiet_at})
    purged = finalize_tombstones(
        world.migration,
        SystemClock(),
        FinalizeOptions(settle_seconds=0.2, timeout_seconds=30, poll_seconds=0.05),
    )
    # THEN finalisation records the switch itself, once quiet, and purges every tombstone
    since = switched_at(store, "source")
    assert since is not None and since >= quiet_at
    assert purged == 4 and tombstones_purged(world.migration)
    held, tombs = destination(world)
    assert tombs == 0
    assert held == expected(world.migration, world.source_items())


def test_second_consumer_takes_over_only_after_lease_expiry(world: World) -> None:
    clock = FakeClock(time.time())
    for n in range(60):
        world.put(item(n, outbox=n % 2 == 0))
    world.split_all()  # scripted: closed parents and their children
    for n in range(60, 80):
        world.put(item(n))
    tuning = Tuning(batch_size=5, poll_interval=0.01, discover_interval=1, heartbeat_interval=1)
    first = world.consumer("first", clock=clock, lease_seconds=10, tuning=tuning)
    second = world.consumer("second", clock=clock, lease_seconds=10, tuning=tuning)
    first.start()
    first.step()
    first.step()
    held_by_first = set(first.readers)
    assert held_by_first
    checkpoints = {s: first.readers[s].checkpoint for s in held_by_first}
    assert all(checkpoints.values())
    # WHEN the second consumer starts while the first one's leases are live
    second.start()
    second.step()
    assert not set(second.readers) & held_by_first
    # and the first one dies (never renews): after the lease time its shards move
    clock.advance(11)
    second.step()
    assert held_by_first <= set(second.readers)
    for shard in held_by_first:
        resumed = second.readers[shard].checkpoint
        assert resumed is not None
        assert resumed >= str(checkpoints[shard])
    assert second.metrics.value("leases_taken_total") >= len(held_by_first)
    # the old owner lets go at its next write (its local deadline passed: the write is
    # refused before it is sent) or at its next renewal (the lease moved on)
    first.step()
    assert not set(first.readers) & held_by_first
    gone = first.metrics.value("leases_lost_total") + first.metrics.value("leases_expired_total")
    assert gone >= 1
    first.shutdown()
    run_to_caught_up(second)
    held, _ = destination(world)
    assert held == expected(world.migration, world.source_items())
    assert_parents_before_children(world)


def test_replaying_the_whole_stream_changes_nothing(world: World) -> None:
    for n in range(30):
        world.put(item(n, outbox=n % 2 == 0))
    world.split_all()
    for n in range(0, 10):
        world.put(item(n, created=FEB))
    for n in range(10, 15):
        world.delete(OUTBOX if n % 2 == 0 else f"user|{n % 7}", f"i{n:04d}")
    run_to_caught_up(world.consumer("w1"))
    before = sorted(
        scan_all(world.clients.dynamodb, world.migration.settings.destination_table), key=key_id
    )
    # WHEN every checkpoint is forgotten and the stream is read again from the trim horizon
    for sk, _ in list(world.migration.store.query("SHARD#source#")):
        world.migration.store.delete(sk)
    again = world.consumer("w2")
    run_to_caught_up(again)
    after = sorted(
        scan_all(world.clients.dynamodb, world.migration.settings.destination_table), key=key_id
    )
    # THEN nothing changed: every write was skipped as not newer
    assert after == before
    assert again.metrics.value("writes_applied_total") == 0
    assert again.metrics.value("tombstones_written_total") == 0
    assert again.metrics.value("writes_stale_total") >= 30


class FailingOnce(DeadLetters):
    """A dead-letter store that is down the first time it is used."""

    def __init__(self, inner: DeadLetters) -> None:
        super().__init__(inner.store)
        self.failed = False

    def add(self, origin: Origin, reason: str, raw: Any, key: Any) -> str:
        if not self.failed:
            self.failed = True
            raise OSError("dead-letter store unavailable")
        return super().add(origin, reason, raw, key)


def test_poison_record_is_dead_lettered_before_the_checkpoint_passes_it(world: World) -> None:
    for n in range(10):
        world.put(item(n))
    world.put({"pk": OUTBOX, "sk": "poison", "n": 1})  # no createdAt: the transform refuses it
    for n in range(10, 20):
        world.put(item(n))
    broken = FailingOnce(world.migration.dead_letters)
    # WHEN the record cannot be dead-lettered, the consumer stops before passing it
    with pytest.raises(OSError, match="unavailable"):
        world.consumer("w1", dead_letters=broken).run(until_caught_up=True)
    assert world.migration.dead_letters.count() == 0
    checkpoints = dict(world.migration.store.query("SHARD#source#"))
    # THEN a restarted consumer dead-letters it (with the raw record) and goes on
    run_to_caught_up(world.consumer("w2"))
    letters = list(world.migration.dead_letters.list())
    assert len(letters) == 1
    assert letters[0].origin == "stream"
    assert "transform" in letters[0].reason
    assert "poison" in letters[0].raw
    raw = json.loads(letters[0].raw)
    if world.bridge is None:
        seq = raw["dynamodb"]["SequenceNumber"].zfill(40)
    else:  # a Kinesis record's position is its Kinesis sequence number
        seq = pad_position(raw["kinesis"]["sequenceNumber"])
    poisoned = shard_sk("source", raw["shard_id"])
    assert str(checkpoints[poisoned].get("checkpoint") or "") < seq
    final = world.migration.store.get(poisoned)
    assert final is not None
    assert str(final["checkpoint"]) >= seq
    held, _ = destination(world)
    assert held == expected(world.migration, [i for i in world.source_items() if "createdAt" in i])


def test_lease_items_follow_the_schema(world: World) -> None:
    for n in range(5):
        world.put(item(n))
    world.split_all()
    world.put(item(5))
    run_to_caught_up(world.consumer("w1"))
    consumer = world.migration.store.get("CONSUMER#source")
    assert consumer is not None
    assert consumer["start_position"] == "TRIM_HORIZON"
    assert consumer["stream_arn"] == world.source.stream_arn
    assert "heartbeat_at" in consumer and "lag_seconds" in consumer
    assert world.migration.consumer_started() is not None
    shards = dict(world.migration.store.query("SHARD#source#"))
    assert shards
    for sk, state in shards.items():
        assert sk == shard_sk("source", sk.split("#", 2)[2])
        assert {"parents", "finished", "stream_arn", "records_applied"} <= set(state)
        assert "lease_owner" not in state  # released at the end of run
    assert sum(int(s["records_applied"]) for s in shards.values()) == world.stream_records(6)


def test_a_drain_request_is_answered_before_the_next_regular_heartbeat(world: World) -> None:
    # GIVEN a consumer whose regular heartbeat is far apart
    clock = FakeClock(time.time())
    world.put(item(1))
    tuning = Tuning(batch_size=5, poll_interval=0.01, heartbeat_interval=600)
    consumer = world.consumer("w", clock=clock, tuning=tuning)
    consumer.start()
    consumer.step()  # the first round heartbeats
    store, sk = world.migration.store, consumer.consumer_sk
    first = (store.get(sk) or {})["heartbeat_at"]
    clock.advance(1.0)
    consumer.step()
    assert (store.get(sk) or {})["heartbeat_at"] == first  # not due yet
    # WHEN a cutover asks for a report from reads sent after `since`
    since = clock.now() + 0.5
    store.update(sk, {"drain_after": since})
    clock.advance(0.2)
    consumer.step()  # too early: its reads were sent before `since`
    assert (store.get(sk) or {})["heartbeat_at"] == first
    clock.advance(0.5)
    consumer.step()
    # THEN the next round answers, with reads sent after `since`
    report = store.get(sk) or {}
    assert float(report["heartbeat_at"]) == clock.now()
    assert float(report["read_from"]) >= since
    answered = report["heartbeat_at"]
    clock.advance(1.0)
    consumer.step()  # answered once only
    assert (store.get(sk) or {})["heartbeat_at"] == answered
    consumer.shutdown()
