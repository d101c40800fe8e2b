"""``livemigrate reverse`` through the real command: bad input is refused before any write, and
the consumer applies the application's destination writes to the source (moto)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from livemigrate.aws import AwsClients
from livemigrate.cli import main
from livemigrate.config import Settings
from livemigrate.control import ControlStore
from livemigrate.destination import DestinationWriter
from livemigrate.examples.hot_outbox import inverse, transform
from livemigrate.fencing import WindowClosed
from livemigrate.flag import ControlFlagStore
from livemigrate.items import to_plain, to_typed
from livemigrate.migration import open_migration
from livemigrate.replication import FORWARD, written_by
from livemigrate.versioning import user_attributes
from stream_consumer.applier import DestinationApplier
from stream_consumer.metrics import Metrics
from tests.services import StreamTail, create_table, scan_all, settings_for, unique
from tests.support.backfill import fill, outbox_items, settings_env
from tests.support.consumer_model import SwitchableMode

INVERSE = "livemigrate.examples.hot_outbox:inverse"


def lossy_inverse(item: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The example's inverse, forgetting one attribute: rollback would lose it everywhere."""
    for back in inverse(item):
        back.pop("body", None)
        yield back


def tables(clients: AwsClients, *, dest_stream: str | None = "NEW_AND_OLD_IMAGES") -> Settings:
    source, dest = unique("rsrc"), unique("rdst")
    create_table(clients.dynamodb, source)
    create_table(clients.dynamodb, dest, stream=dest_stream)
    fill(clients.dynamodb, source, outbox_items(30))
    return settings_for(source, dest)


def cut_over(clients: AwsClients, settings: Settings) -> None:
    """The flag flip of a cutover: from now on the application writes the destination."""
    store = ControlStore(clients.dynamodb, settings.control_table, settings.migration_id)
    store.ensure_table()
    flags = ControlFlagStore(store, settings.source_table, settings.destination_table)
    flag = flags.read()
    flags.write(flag.flipped("destination", time.time()), flag.epoch)


def reverse(monkeypatch: pytest.MonkeyPatch, settings: Settings, *flags: str) -> int:
    for name, value in settings_env(settings).items():
        if name.startswith("LIVEMIGRATE_"):
            monkeypatch.setenv(name, value)
    return main(["reverse", *flags])


def nothing_written(clients: AwsClients, settings: Settings) -> bool:
    tables_now = clients.dynamodb.list_tables(Limit=100)["TableNames"]
    return settings.control_table not in tables_now and not list(
        scan_all(clients.dynamodb, settings.destination_table)
    )


def test_without_an_inverse_transform_it_says_what_to_set(
    clients: AwsClients, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = tables(clients)
    assert reverse(monkeypatch, settings, "--until-caught-up") == 2
    err = capsys.readouterr().err
    assert "no inverse transform is configured" in err
    assert "LIVEMIGRATE_INVERSE_TRANSFORM" in err
    assert nothing_written(clients, settings)


def test_a_lossy_inverse_is_refused_before_any_write(
    clients: AwsClients, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = tables(clients)
    lossy = "tests.integration.test_reverse_cli:lossy_inverse"
    flags = ("--inverse-transform", lossy, "--until-caught-up")
    assert reverse(monkeypatch, settings, *flags) == 2
    err = capsys.readouterr().err
    assert "does not give source item" in err
    assert "lost ['body']" in err
    assert nothing_written(clients, settings)


def test_a_destination_without_a_stream_is_refused(
    clients: AwsClients, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = tables(clients, dest_stream=None)
    assert reverse(monkeypatch, settings, "--inverse-transform", INVERSE, "--until-caught-up") == 2
    err = capsys.readouterr().err
    assert f"table '{settings.destination_table}' has no DynamoDB stream" in err
    assert nothing_written(clients, settings)


def test_application_writes_to_the_destination_reach_the_source(
    clients: AwsClients, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN the destination as the forward consumer left it (stamped items) ...
    settings = tables(clients)
    ddb, source, dest = clients.dynamodb, settings.source_table, settings.destination_table
    items = outbox_items(30)
    for seq, item in enumerate(items[:10], start=1):
        for out in transform(dict(item)):
            stamped = {**to_typed(out), "_lm_seq": {"S": f"{seq:040d}"}}
            ddb.put_item(TableName=dest, Item=stamped)
    # ... the cutover ...
    cut_over(clients, settings)
    # ... and then the application's own writes after the cutover: a new item, an update of
    # an existing one (its stamp stays), a delete.
    new = {**items[10], "sk": "after-cutover"}
    ddb.put_item(TableName=dest, Item=to_typed(next(iter(transform(dict(new))))))
    first = next(iter(transform(dict(items[0]))))
    ddb.update_item(
        TableName=dest,
        Key=to_typed({"pk": first["pk"], "sk": first["sk"]}),
        UpdateExpression="SET #s = :s",
        ExpressionAttributeNames={"#s": "section"},
        ExpressionAttributeValues={":s": {"S": "edited"}},
    )
    second = next(iter(transform(dict(items[1]))))
    ddb.delete_item(TableName=dest, Key=to_typed({"pk": second["pk"], "sk": second["sk"]}))

    # WHEN the reverse consumer runs to the end of the destination's stream
    assert reverse(monkeypatch, settings, "--inverse-transform", INVERSE, "--until-caught-up") == 0

    # THEN exactly the application's three writes reached the source
    held = {(i["pk"], i["sk"]): user_attributes(i) for i in map(to_plain, scan_all(ddb, source))}
    want = {(i["pk"], i["sk"]): dict(i) for i in items}
    want[(new["pk"], new["sk"])] = new
    want[(items[0]["pk"], items[0]["sk"])] = {**items[0], "section": "edited"}
    del want[(items[1]["pk"], items[1]["sk"])]
    assert held == want
    store = ControlStore(ddb, settings.control_table, settings.migration_id)
    assert (store.get("META") or {}).get("inverse_transform") == INVERSE
    assert store.get("CONSUMER#reverse") is not None


def test_forward_deletes_before_the_cutover_are_one_write_and_never_reach_the_source(
    clients: AwsClients, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN the forward consumer copied items and then deleted some of them for real, with no
    # mark (one conditional delete each: no cutover is coming) ...
    settings = Settings(**{**tables(clients).model_dump(), "inverse_transform": INVERSE})
    ddb, source, dest = clients.dynamodb, settings.source_table, settings.destination_table
    migration = open_migration(settings, clients)
    tail = StreamTail(clients, source)
    applier = DestinationApplier.for_migration(migration, Metrics("source"))
    applier.mode = SwitchableMode(lambda: True)  # the backfill is complete: real deletes
    items = outbox_items(30)
    fill(ddb, source, items[:5])  # re-put: the stream sees them
    applier.apply(tail.drain())
    for item in items[:3]:
        ddb.delete_item(TableName=source, Key=to_typed({"pk": item["pk"], "sk": item["sk"]}))
    applier.apply(tail.drain())
    applier.close()
    removes = [r for r in StreamTail(clients, dest).drain() if r.event_name == "REMOVE"]
    assert len(removes) == 3
    assert not any(written_by(FORWARD, r) for r in removes)  # unmarked: one write each
    # ... and the source item of one of them is back (written again by the application).
    fill(ddb, source, items[:1])
    # WHEN the reverse consumer reads the destination's stream (no cutover has happened)
    assert reverse(monkeypatch, settings, "--inverse-transform", INVERSE, "--until-caught-up") == 0
    # THEN those deletes were the forward consumer's, by time: the source keeps its item
    held = ddb.get_item(
        TableName=source, Key=to_typed({"pk": items[0]["pk"], "sk": items[0]["sk"]})
    )
    assert "Item" in held


def test_forward_deletes_are_marked_once_a_cutover_arms_the_flag(clients: AwsClients) -> None:
    settings = tables(clients)
    ddb, source, dest = clients.dynamodb, settings.source_table, settings.destination_table
    migration = open_migration(settings, clients)
    tail = StreamTail(clients, source)
    applier = DestinationApplier.for_migration(migration, Metrics("source"))
    applier.mode = SwitchableMode(lambda: True)
    items = outbox_items(30)
    fill(ddb, source, items[:2])
    applier.apply(tail.drain())
    flags = ControlFlagStore(migration.store, source, dest)
    flag = flags.read()
    flags.write(flag.armed(time.time()), flag.epoch)
    time.sleep(1.1)  # past the cached flag's validity (MARK_VALIDITY / 2)
    ddb.delete_item(TableName=source, Key=to_typed({"pk": items[0]["pk"], "sk": items[0]["sk"]}))
    applier.apply(tail.drain())
    applier.close()
    removes = [r for r in StreamTail(clients, dest).drain() if r.event_name == "REMOVE"]
    assert len(removes) == 1 and written_by(FORWARD, removes[0])


def test_an_unmarked_delete_sent_after_its_flag_read_expired_is_refused(
    clients: AwsClients,
) -> None:
    # A forward process decided "unmarked" on a flag read that is too old to vouch that no
    # cutover has armed the flag since: the delete is refused (the batch is retried with a
    # fresh read) instead of landing unmarked near the flip.
    settings = tables(clients)
    ddb, source = clients.dynamodb, settings.source_table
    migration = open_migration(settings, clients)
    tail = StreamTail(clients, source)
    applier = DestinationApplier.for_migration(migration, Metrics("source"))
    applier.mode = SwitchableMode(lambda: True)
    items = outbox_items(30)
    fill(ddb, source, items[:1])
    applier.apply(tail.drain())
    assert applier.marking is not None
    applier.marking.validity = 0.0  # every unmarked decision is already out of date
    ddb.delete_item(TableName=source, Key=to_typed({"pk": items[0]["pk"], "sk": items[0]["sk"]}))
    with pytest.raises(WindowClosed, match="unmarked deletes"):
        applier.apply(tail.drain())
    applier.close()
    kept = next(iter(transform(dict(items[0]))))
    key = to_typed({"pk": kept["pk"], "sk": kept["sk"]})
    assert "Item" in ddb.get_item(TableName=settings.destination_table, Key=key)


def test_the_forward_consumer_marks_deletes_only_with_an_inverse_transform(
    clients: AwsClients,
) -> None:
    plain = tables(clients)
    assert not open_migration(plain, clients).writer.mark_deletes
    configured = tables(clients)
    configured = Settings(**{**configured.model_dump(), "inverse_transform": INVERSE})
    assert open_migration(configured, clients).writer.mark_deletes
    # Recorded by `livemigrate reverse`: every consume process started later marks too.
    ControlStore(clients.dynamodb, plain.control_table, plain.migration_id).update(
        "META", {"inverse_transform": INVERSE}
    )
    assert open_migration(plain, clients).writer.mark_deletes


def test_a_repair_delete_is_marked_so_the_reverse_consumer_skips_it(clients: AwsClients) -> None:
    # verify --repair replaces a backfill copy by deleting it first: with a reverse consumer
    # reading D's stream, that delete must carry the forward mark like the consumer's own.
    dest = unique("rdst")
    create_table(clients.dynamodb, dest)
    writer = DestinationWriter(clients.dynamodb, dest, ("pk", "sk"), "m1", mark_deletes=True)
    item = to_typed(next(iter(transform(dict(outbox_items(1)[0])))))
    writer.put_if_absent(item)
    assert writer.delete_backfill_copy(writer.key(item))
    assert not list(scan_all(clients.dynamodb, dest))
    records = StreamTail(clients, dest).drain()
    assert [r.event_name for r in records] == ["INSERT", "MODIFY", "REMOVE"]
    assert all(written_by(FORWARD, r) for r in records)
