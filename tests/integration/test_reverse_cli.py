"""``livemigrate reverse`` through the real command: bad input is refused before any write, and
the consumer applies the application's destination writes to the source (moto)."""

from __future__ import annotations

import subprocess
import sys
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
from livemigrate.items import to_plain, to_typed
from livemigrate.migration import open_migration
from livemigrate.replication import FORWARD, written_by
from tests.integration.test_backfill_support import fill, outbox_items, settings_env
from tests.services import StreamTail, create_table, scan_all, settings_for, unique

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
    held = {
        (i["pk"], i["sk"]): {k: v for k, v in i.items() if not k.startswith("_lm_")}
        for i in map(to_plain, scan_all(ddb, source))
    }
    want = {(i["pk"], i["sk"]): dict(i) for i in items}
    want[(new["pk"], new["sk"])] = new
    want[(items[0]["pk"], items[0]["sk"])] = {**items[0], "section": "edited"}
    del want[(items[1]["pk"], items[1]["sk"])]
    assert held == want
    store = ControlStore(ddb, settings.control_table, settings.migration_id)
    assert (store.get("META") or {}).get("inverse_transform") == INVERSE
    assert store.get("CONSUMER#reverse") is not None


def test_recent_unmarked_forward_deletes_are_refused_before_any_write(
    clients: AwsClients, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a forward consumer that ran without an inverse transform and deleted for real
    settings = tables(clients)
    store = ControlStore(clients.dynamodb, settings.control_table, settings.migration_id)
    store.ensure_table()
    store.put("CONSUMER#source", {"unmarked_deletes_at": time.time() - 3600})
    # WHEN the reverse consumer starts, THEN it refuses and says until when
    assert reverse(monkeypatch, settings, "--inverse-transform", INVERSE, "--until-caught-up") == 2
    err = capsys.readouterr().err
    assert "deleted destination items without marking them" in err
    assert "Traceback" not in err
    assert "start the reverse consumer after" in err
    assert store.get("META") is None  # the migration was not even recorded
    # Deletes older than the stream's retention are out of its reach: no objection.
    store.put("CONSUMER#source", {"unmarked_deletes_at": time.time() - 26 * 3600})
    assert reverse(monkeypatch, settings, "--inverse-transform", INVERSE, "--until-caught-up") == 0


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


def test_an_unmarked_forward_delete_while_it_runs_stops_the_reverse_consumer(
    clients: AwsClients,
) -> None:
    # GIVEN a running reverse consumer
    settings = tables(clients)
    env = {**settings_env(settings), "LIVEMIGRATE_INVERSE_TRANSFORM": INVERSE}
    argv = ["reverse", "--poll-interval", "0.1", "--lease-seconds", "3"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "livemigrate.cli", "--log-level", "WARNING", *argv],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    store = ControlStore(clients.dynamodb, settings.control_table, settings.migration_id)
    try:
        deadline = time.monotonic() + 60
        while not (store.exists() and store.get("CONSUMER#reverse")):
            assert proc.poll() is None and time.monotonic() < deadline, "it did not start"
            time.sleep(0.2)
        # WHEN a forward process (started without the inverse) deletes without marking
        store.update("CONSUMER#source", {"unmarked_deletes_at": time.time()})
        # THEN it stops at its next heartbeat (5 s) with the reason, instead of going on
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 2, err[-2000:]
    assert "deleted destination items without marking them" in err
    assert "Traceback" not in err
