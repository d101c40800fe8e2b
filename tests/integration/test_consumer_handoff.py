"""Ownership on moto (ARCHITECTURE.md rule 12; issue 10 items 7 and 8).

- a destination key handed from one source item to another on different scripted shards ends
  with the new owner, in either apply order, with tombstones or real deletes (item 7), and the
  hypothesis scenarios of tests/unit/test_consumer_handoff.py (tests/support/handoff.py) hold
  through the real writer;
- an item whose intermediate version the transform refuses leaves no orphan (item 8), and
  ``verify --repair`` removes an orphan it can prove;
- two live source items mapping to one destination key are a collision: dead-lettered,
  counted for ``status``, and reported by ``verify``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from livemigrate.aws import AwsClients
from livemigrate.clock import SystemClock
from livemigrate.destination import DestinationWriter, Outcome
from livemigrate.items import TypedItem, key_id, to_plain, to_typed
from livemigrate.migration import Migration, open_migration
from livemigrate.ownership import COLLISIONS_COUNTER, owner_id
from livemigrate.replication import FORWARD, REVERSE, written_by
from livemigrate.status import collect, render
from livemigrate.verify import VerifyOptions, verify
from livemigrate.versioning import OWNER_ATTR, pad_seq, user_attributes
from stream_consumer.applier import DestinationApplier
from stream_consumer.engine import Consumer, ConsumerOptions, Tuning
from stream_consumer.metrics import Metrics
from stream_consumer.scripted import ScriptedStream, ScriptedTable
from stream_consumer.source import BotoShardSource
from stream_consumer.tombstones import tombstones
from tests.services import StreamTail, create_table, scan_all, settings_for, unique
from tests.support.handoff import Harness, Scenario, play, scenarios, users_on_shards

BY_EMAIL = "livemigrate.examples.by_email:transform"
FAST = Tuning(batch_size=10, poll_interval=0.02, discover_interval=0.1, heartbeat_interval=0.1)
# The consumer is not running while verify runs: no waiting for its position.
VERIFY = VerifyOptions(buckets=4, segments=2, recheck_wait=0.05, recheck_rounds=1, consumer_wait=0)


@pytest.fixture(scope="module")
def writer(clients: AwsClients) -> DestinationWriter:
    table = unique("handoff")
    create_table(clients.dynamodb, table, stream=None)
    return DestinationWriter(clients.dynamodb, table, ("pk", "sk"), "m1")


def visible(writer: DestinationWriter, tag: str) -> dict[str, dict[str, Any]]:
    """This example's destination items (by tag), tombstones excluded, ``_lm_*`` stripped."""
    out = {}
    for raw in scan_all(writer.client, writer.table):
        if tag not in raw["pk"]["S"] or "_lm_tomb" in raw:
            continue
        plain = user_attributes(to_plain(raw))
        out[key_id({"pk": raw["pk"], "sk": raw["sk"]})] = plain
    return out


def mine(writer: DestinationWriter, tag: str) -> Iterator[tuple[TypedItem, str]]:
    return (t for t in tombstones(writer) if tag in t[0]["pk"]["S"])


# -- item 7: a key handed between items on different shards ------------------------------------
@pytest.mark.parametrize("real_deletes", [False, True], ids=["tombstones", "deletes"])
@pytest.mark.parametrize("first", [0, 1], ids=["giver-shard-first", "taker-shard-first"])
def test_a_key_given_up_on_one_shard_and_taken_on_another_ends_with_the_taker(
    writer: DestinationWriter, real_deletes: bool, first: int
) -> None:
    # GIVEN u0 on shard 0 (whose sequence numbers run 8 records higher) holding the address
    mode = "deletes" if real_deletes else "tombstones"
    s = Scenario(offsets=(8, 0), steps=[], mode=mode, switch_at=0)
    h = Harness(writer, s)
    h.real = real_deletes
    h.write(0, "take")
    h.drain()
    # WHEN u0 gives it up (shard 0) and then u1 takes it (shard 1), applied in either order
    h.write(0, "give")
    h.write(1, "take")
    h.drain(first)
    h.applier.close()
    # THEN the address is u1's (the sequence numbers of u0 and u1 decided nothing)
    held = visible(writer, h.tag)
    assert held == h.expected()
    shared = key_id(to_typed({"pk": f"email|{h.shared}", "sk": "user"}))
    assert held[shared]["user"] == h.users[1]["pk"]["S"]
    assert h.dead == []


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(scenarios())
def test_handoffs_between_scripted_shards_hold_on_moto_through_the_real_writer(
    writer: DestinationWriter, s: Scenario
) -> None:
    h = Harness(writer, s)
    play(s, writer, lambda: mine(writer, h.tag), h)
    assert visible(writer, h.tag) == h.expected()
    assert all(reason.startswith("transform failed") for reason in h.dead), h.dead
    assert h.ownership.collisions == 0


# -- the consumer engine on moto's stream: item 8, repair, collisions ------------------------
@pytest.fixture
def migration(clients: AwsClients) -> Migration:
    source, dest = unique("src"), unique("dst")
    create_table(clients.dynamodb, source)
    create_table(clients.dynamodb, dest, stream=None)
    settings = settings_for(source, dest, transform=BY_EMAIL, search_url=None)
    return open_migration(settings, clients)


def user(n: int, email: str, v: int = 0) -> dict[str, Any]:
    return to_typed({"pk": f"user|{n}", "sk": "profile", "email": email, "v": v})


def put(migration: Migration, item: dict[str, Any]) -> None:
    migration.clients.dynamodb.put_item(TableName=migration.source.name, Item=item)


def consume(migration: Migration) -> Consumer:
    metrics = Metrics("source")
    consumer = Consumer(
        BotoShardSource(migration.clients.streams, str(migration.source.stream_arn)),
        DestinationApplier.for_migration(migration, metrics, threads=2, refresh_seconds=0.0),
        ConsumerOptions.for_source(
            migration, "w1", lease_seconds=5, clock=SystemClock(), tuning=FAST
        ),
        metrics=metrics,
    )
    assert consumer.run(until_caught_up=True)
    return consumer


def destination_keys(migration: Migration) -> set[str]:
    raws = scan_all(migration.clients.dynamodb, migration.destination.name)
    return {raw["pk"]["S"] for raw in raws if "_lm_tomb" not in raw}


def test_no_orphan_after_an_intermediate_version_the_transform_refuses(
    migration: Migration,
) -> None:
    # GIVEN u1 at a@x, applied
    put(migration, user(1, "a@x"))
    consume(migration)
    # WHEN u1 gets an address the transform refuses (dead-lettered), then b@x
    put(migration, user(1, "not-an-address", 1))
    put(migration, user(1, "b@x", 2))
    consume(migration)
    # THEN the destination holds b@x only: a@x, owned until the refused version, is removed
    assert destination_keys(migration) == {"email|b@x"}
    (letter,) = list(migration.dead_letters.list())
    assert "transform failed" in letter.reason


def test_repair_removes_an_orphan_it_can_prove_and_leaves_other_extras(
    migration: Migration,
) -> None:
    # GIVEN u1 now at b@x, an a@x item it left behind (owned by u1), and an extra with no owner
    put(migration, user(1, "b@x"))
    consume(migration)
    writer = migration.writer
    orphan = to_typed({"pk": "email|a@x", "sk": "user", "user": "user|1", "v": 0})
    u1 = to_typed({"pk": "user|1", "sk": "profile"})
    writer.claim(orphan, pad_seq("1"), owner_id(u1))
    stray = to_typed({"pk": "email|stray@x", "sk": "user"})
    writer.put_if_newer(stray, pad_seq("1"))
    held = writer.client.get_item(TableName=writer.table, Key=writer.key(orphan))["Item"]
    assert held[OWNER_ATTR] == {"S": owner_id(u1)}
    # WHEN verify --repair runs
    report = verify(migration, VERIFY, repair=True, search=False)
    # THEN the provable orphan is gone; the extra without an owner is left and reported
    assert report.counts["extra"] == 2
    assert report.repairs == {"orphan_removed": 1, "extra_left_alone": 1}
    assert destination_keys(migration) == {"email|b@x", "email|stray@x"}
    again = verify(migration, VERIFY, search=False)
    assert again.counts == {"missing": 0, "extra": 1, "different": 0}


def test_two_live_items_on_one_key_are_a_collision_dead_lettered_and_reported(
    migration: Migration,
) -> None:
    # GIVEN two users with the same address, both live
    put(migration, user(1, "same@x"))
    put(migration, user(2, "same@x"))
    # WHEN the consumer applies both
    consumer = consume(migration)
    # THEN the first keeps the key, the second is dead-lettered naming both and the key
    (letter,) = list(migration.dead_letters.list())
    assert "collision" in letter.reason
    assert "user|1" in letter.reason and "user|2" in letter.reason
    assert "email|same@x" in letter.reason
    assert consumer.metrics.value("collisions_total") == 1
    assert migration.store.metrics().get(COLLISIONS_COUNTER) == 1
    assert re.search(rf"{COLLISIONS_COUNTER}\s+1\n", _status_counters(migration))
    # and verify reports the collision and fails
    report = verify(migration, VERIFY, search=False)
    assert report.collisions == 1
    assert not report.passed
    example = report.collision_examples[0]
    assert sorted(k["pk"] for k in example["source_keys"]) == ["user|1", "user|2"]
    assert (migration.store.get("VERIFY") or {})["collisions"] == 1


def _status_counters(migration: Migration) -> str:
    """The text ``livemigrate status`` prints."""
    return render(collect(migration.store))


def test_handoffs_with_a_lower_stamp_are_still_echoes_of_the_forward_consumer(
    clients: AwsClients,
) -> None:
    # GIVEN a destination with a stream (a reverse consumer reads it after the cutover)
    table = unique("echo")
    create_table(clients.dynamodb, table)
    writer = DestinationWriter(clients.dynamodb, table, ("pk", "sk"), "m1")
    tail = StreamTail(clients, table)
    key = to_typed({"pk": "email|e@x", "sk": "user"})
    u, v = (owner_id(to_typed({"pk": f"user|{n}", "sk": "profile"})) for n in ("u", "v"))
    # WHEN the key passes from v (stamp 900) to u (stamp 100, another shard), u removes it
    # (a tombstone), and v takes it again with stamp 50
    assert writer.claim({**key, "by": {"S": "v"}}, pad_seq("900"), v)[0] is Outcome.APPLIED
    outcome, held = writer.claim({**key, "by": {"S": "u"}}, pad_seq("100"), u)
    assert outcome is Outcome.OWNED_BY_OTHER and held is not None
    assert writer.claim({**key, "by": {"S": "u"}}, pad_seq("100"), u, held)[0] is Outcome.APPLIED
    assert writer.remove(key, pad_seq("200"), tombstone=True, owner=u) is Outcome.TOMBSTONED
    outcome, held = writer.claim({**key, "by": {"S": "v"}}, pad_seq("50"), v)
    assert outcome is Outcome.OWNED_BY_OTHER and held is not None and held.removed
    assert writer.claim({**key, "by": {"S": "v"}}, pad_seq("50"), v, held)[0] is Outcome.APPLIED
    # THEN every record on the destination's stream is the forward consumer's echo, never the
    # application's (the reverse consumer would write it back into the source)
    records = tail.drain()
    assert len(records) == 4
    assert all(written_by(FORWARD, r) and not written_by(REVERSE, r) for r in records), records


def test_the_consumer_engine_hands_keys_over_between_scripted_shards(
    migration: Migration,
) -> None:
    # GIVEN the by-email migration fed by a two-shard scripted stream whose shards number their
    # records independently (shard 0's numbers run 8 records higher)
    stream = ScriptedStream(shards=2, seq_offsets=(8, 0))
    table = ScriptedTable(stream)
    shards = stream.open_shards()
    users = users_on_shards(stream, "engine", 0)
    # WHEN the address passes u0 -> u1 -> u0 -> u1, with a refused version on the way
    moves = [(0, "a@x"), (0, "own0@x"), (1, "a@x"), (1, "bad"), (0, "a@x"), (0, "gone")]
    moves += [(1, "b@x"), (1, "own1@x"), (1, "a@x")]
    for n, (who, email) in enumerate(moves):
        if email == "gone":
            table.delete(users[who])
        else:
            table.put({**users[who], **to_typed({"email": email, "v": n})})
    metrics = Metrics("source")
    applier = DestinationApplier.for_migration(
        migration, metrics, threads=2, refresh_seconds=0.0, source=table.get
    )
    consumer = Consumer(
        stream,
        applier,
        ConsumerOptions.for_source(
            migration, "w1", lease_seconds=5, clock=stream.clock, tuning=FAST
        ),
        metrics=metrics,
    )
    assert consumer.run(until_caught_up=True)
    # THEN the destination is the transform of the source: a@x is u1's, nothing else is left
    held = {
        raw["pk"]["S"]: raw
        for raw in scan_all(migration.clients.dynamodb, migration.destination.name)
        if "_lm_tomb" not in raw
    }
    assert set(held) == {"email|a@x"}
    assert held["email|a@x"]["user"] == users[1]["pk"]
    assert {stream.shard_for(u) for u in users[:2]} == set(shards)
    (letter,) = list(migration.dead_letters.list())
    assert "transform failed" in letter.reason


class HandingOverClock(SystemClock):
    """Hands the address over in the source during verify's first recheck wait."""

    def __init__(self, migration: Migration) -> None:
        self.migration = migration

    def sleep(self, seconds: float) -> None:
        put(self.migration, user(1, "own1@x", 9))


def test_a_collision_seen_only_while_a_key_changes_hands_is_not_reported(
    migration: Migration,
) -> None:
    # GIVEN both users at one address when verify scans the source (u1 is about to give it up)
    put(migration, user(1, "same@x"))
    put(migration, user(2, "same@x"))
    # WHEN u1 moves on before the recheck re-reads both source items
    report = verify(migration, VERIFY, search=False, clock=HandingOverClock(migration))
    # THEN no collision is reported; the key is an ordinary difference again: nothing was
    # applied, so u2's same@x is missing (u1's new address came after the scan)
    assert report.collisions == 0
    assert report.counts == {"missing": 1, "extra": 0, "different": 0}
    (missing,) = report.examples["missing"]
    assert missing["key"]["pk"] == "email|same@x"
    assert missing["source_key"]["pk"] == "user|2"
    assert not report.passed
