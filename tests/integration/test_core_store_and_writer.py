"""Control store and destination writer against moto's server: the conditional writes hold."""

from __future__ import annotations

from typing import Any

import pytest

from livemigrate.aws import AwsClients
from livemigrate.control import ControlStore
from livemigrate.deadletters import DeadLetters
from livemigrate.destination import DestinationWriter, Outcome
from livemigrate.errors import ConflictError, PreflightError
from livemigrate.migration import open_migration
from livemigrate.versioning import pad_seq
from tests.services import create_table, settings_for, unique

KEY = {"pk": {"S": "a"}, "sk": {"S": "1"}}


@pytest.fixture
def store(clients: AwsClients) -> ControlStore:
    s = ControlStore(clients.dynamodb, unique("control"), "m1")
    s.ensure_table()
    return s


@pytest.fixture
def writer(clients: AwsClients) -> DestinationWriter:
    table = unique("dest")
    create_table(clients.dynamodb, table)
    return DestinationWriter(clients.dynamodb, table, ("pk", "sk"), "m1")


def held(writer: DestinationWriter) -> dict[str, Any] | None:
    item = writer.client.get_item(TableName=writer.table, Key=KEY, ConsistentRead=True)
    return dict(item["Item"]) if "Item" in item else None


def test_lease_is_exclusive_until_expiry_then_taken_over(store: ControlStore) -> None:
    store.put("SEG#000001", {"state": "pending"})
    assert store.claim("SEG#000001", "w1", ttl_seconds=10, now=100.0) is not None
    assert store.claim("SEG#000001", "w2", ttl_seconds=10, now=105.0) is None
    taken = store.claim("SEG#000001", "w2", ttl_seconds=10, now=111.0)
    assert taken is not None
    assert taken["lease_owner"] == "w2"
    assert taken["lease_counter"] == 2


def test_claim_of_an_item_that_does_not_exist_fails(store: ControlStore) -> None:
    assert store.claim("SEG#999999", "w1", ttl_seconds=10) is None


def test_second_migration_on_same_destination_is_refused(clients: AwsClients) -> None:
    control = unique("control")
    first = ControlStore(clients.dynamodb, control, "m1")
    first.ensure_table()
    first.register_destination("dest-x", "src-x")
    first.register_destination("dest-x", "src-x")  # the same migration again is fine
    second = ControlStore(clients.dynamodb, control, "m2")
    with pytest.raises(ConflictError, match="already belongs to migration 'm1'"):
        second.register_destination("dest-x", "src-y")


def test_backfill_put_loses_to_a_live_write_and_never_overwrites(
    writer: DestinationWriter,
) -> None:
    assert writer.put_if_newer({**KEY, "v": {"S": "live"}}, pad_seq("200")) is Outcome.APPLIED
    assert writer.put_if_absent({**KEY, "v": {"S": "bulk"}}) is Outcome.SUPERSEDED
    assert (held(writer) or {})["v"] == {"S": "live"}


def test_stream_write_wins_over_backfill_but_not_over_newer(writer: DestinationWriter) -> None:
    assert writer.put_if_absent({**KEY, "v": {"S": "bulk"}}) is Outcome.WRITTEN
    assert writer.put_if_newer({**KEY, "v": {"S": "s5"}}, pad_seq("500")) is Outcome.APPLIED
    assert writer.put_if_newer({**KEY, "v": {"S": "s3"}}, pad_seq("300")) is Outcome.STALE
    assert writer.put_if_newer({**KEY, "v": {"S": "s5b"}}, pad_seq("500")) is Outcome.STALE
    assert (held(writer) or {})["v"] == {"S": "s5"}


def test_tombstone_blocks_late_backfill_then_purge_removes_it(writer: DestinationWriter) -> None:
    seq = pad_seq("700")
    assert writer.remove(KEY, seq, tombstone=True) is Outcome.TOMBSTONED
    assert writer.put_if_absent({**KEY, "v": {"S": "bulk"}}) is Outcome.SUPERSEDED
    assert writer.purge_tombstone(KEY, pad_seq("699")) is False
    assert writer.purge_tombstone(KEY, seq) is True
    assert held(writer) is None


def test_purge_leaves_a_newer_write_alone(writer: DestinationWriter) -> None:
    writer.remove(KEY, pad_seq("700"), tombstone=True)
    writer.put_if_newer({**KEY, "v": {"S": "back"}}, pad_seq("800"))
    assert writer.purge_tombstone(KEY, pad_seq("700")) is False
    assert (held(writer) or {})["v"] == {"S": "back"}


def test_dead_letters_keep_reason_and_raw_input(store: ControlStore) -> None:
    dlq = DeadLetters(store)
    dlq.add("backfill", "transform raised KeyError", {"pk": "a", "big": "x" * 1000}, {"pk": "a"})
    (letter,) = list(dlq.list())
    assert letter.reason == "transform raised KeyError"
    assert '"big":"' in letter.raw
    assert dlq.count() == 1
    assert dlq.unacknowledged() == 1
    assert dlq.acknowledge_all("ops") == 1
    assert dlq.unacknowledged() == 0


def test_open_migration_refuses_missing_source_and_wrong_stream(clients: AwsClients) -> None:
    dest = unique("dest")
    create_table(clients.dynamodb, dest)
    with pytest.raises(PreflightError, match=r"source table .* does not exist"):
        open_migration(settings_for(unique("nosuch"), dest), clients)
    keys_only = unique("src")
    create_table(clients.dynamodb, keys_only, stream="KEYS_ONLY")
    with pytest.raises(PreflightError, match="needs NEW_AND_OLD_IMAGES"):
        open_migration(settings_for(keys_only, dest), clients)
    no_stream = unique("src")
    create_table(clients.dynamodb, no_stream, stream=None)
    with pytest.raises(PreflightError, match="no DynamoDB stream"):
        open_migration(settings_for(no_stream, dest), clients)


def test_open_migration_refuses_missing_destination_unless_asked_to_create(
    clients: AwsClients,
) -> None:
    src = unique("src")
    create_table(clients.dynamodb, src)
    settings = settings_for(src, unique("dest"))
    with pytest.raises(PreflightError, match=r"destination table .* does not exist"):
        open_migration(settings, clients)
    migration = open_migration(settings, clients, create_destination=True)
    assert migration.destination.key_names == ("pk", "sk")
    assert migration.destination.stream_view_type == "NEW_AND_OLD_IMAGES"
