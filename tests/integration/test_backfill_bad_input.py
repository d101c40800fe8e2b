"""Bad input, one test each, through the real command: a clear error or a dead letter, no loss."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from backfill import plan
from livemigrate.aws import AwsClients
from livemigrate.config import Settings
from livemigrate.control import ControlStore
from livemigrate.deadletters import DeadLetters
from livemigrate.exitcodes import ExitCode
from tests.services import create_table, scan_all, settings_for, unique
from tests.support.backfill import (
    backfill_cli,
    destination,
    fill,
    outbox_items,
    outbox_tables,
)

pytestmark = pytest.mark.integration

SUPPORT = "tests.support.backfill"
FAST = ("--without-consumer", "--workers", "2", "--page-size", "25")


def store_of(settings: Settings, clients: AwsClients) -> ControlStore:
    return ControlStore(clients.dynamodb, settings.control_table, settings.migration_id)


def test_missing_source_table_is_refused_by_name(
    clients: AwsClients, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = unique("dst")
    create_table(clients.dynamodb, dest, stream=None)
    settings = settings_for(unique("nosuch"), dest)
    assert backfill_cli(monkeypatch, settings, *FAST) == 2
    err = capsys.readouterr().err
    assert f"source table '{settings.source_table}' does not exist" in err
    assert "LIVEMIGRATE_SOURCE_TABLE" in err


def test_missing_destination_says_how_to_create_it_and_creates_it_when_asked(
    clients: AwsClients, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    source = unique("src")
    create_table(clients.dynamodb, source)
    fill(clients.dynamodb, source, outbox_items(20))
    settings = settings_for(source, unique("dst"))
    assert backfill_cli(monkeypatch, settings, *FAST) == 2
    err = capsys.readouterr().err
    assert f"destination table '{settings.destination_table}' does not exist" in err
    assert "--create-destination" in err
    # Nothing was recorded: the refusal came before any write.
    assert not store_of(settings, clients).exists()
    assert backfill_cli(monkeypatch, settings, *FAST, "--create-destination") == 0
    table = clients.dynamodb.describe_table(TableName=settings.destination_table)["Table"]
    assert {k["AttributeName"] for k in table["KeySchema"]} == {"pk", "sk"}
    assert len(destination(clients.dynamodb, settings.destination_table)) == 20


def test_transform_that_raises_dead_letters_the_item_and_the_run_continues(
    clients: AwsClients, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = outbox_tables(clients, 40, transform=f"{SUPPORT}:raising_transform")
    assert (
        backfill_cli(monkeypatch, settings, *FAST) == ExitCode.NOT_MIGRATED
    )  # complete, items not migrated
    letters = list(DeadLetters(store_of(settings, clients)).list())
    failing = [i for i in range(40) if i % 7 == 0]
    assert len(letters) == len(failing)
    assert all("transform raised ValueError: unexpected shape" in x.reason for x in letters)
    assert sorted(json.loads(x.key)["sk"] for x in letters) == [f"msg-{i:06d}" for i in failing]
    assert all(json.loads(x.raw)["body"].startswith("payload ") for x in letters)
    assert len(destination(clients.dynamodb, settings.destination_table)) == 40 - len(failing)
    assert store_of(settings, clients).metrics()["dead_letters"] == len(failing)


def test_output_without_destination_keys_is_dead_lettered(
    clients: AwsClients, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = outbox_tables(clients, 30, transform=f"{SUPPORT}:keyless_transform")
    assert (
        backfill_cli(monkeypatch, settings, *FAST) == ExitCode.NOT_MIGRATED
    )  # complete, items not migrated
    letters = list(DeadLetters(store_of(settings, clients)).list())
    assert len(letters) == 6  # every 5th of 30
    assert all("lacks destination key attribute 'sk'" in x.reason for x in letters)
    assert len(destination(clients.dynamodb, settings.destination_table)) == 24


def test_oversized_output_is_dead_lettered_with_its_size(
    clients: AwsClients, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = outbox_tables(clients, 10, transform=f"{SUPPORT}:bloating_transform")
    big = {"pk": "section-outbox|big", "sk": "msg-999999", "createdAt": Decimal(1), "big": True}
    fill(clients.dynamodb, settings.source_table, [big])
    assert (
        backfill_cli(monkeypatch, settings, *FAST) == ExitCode.NOT_MIGRATED
    )  # complete, items not migrated
    (letter,) = DeadLetters(store_of(settings, clients)).list()
    assert "bytes; DynamoDB's limit is 409600 bytes" in letter.reason
    assert '"msg-999999"' in letter.key
    assert len(destination(clients.dynamodb, settings.destination_table)) == 10


def test_second_migration_on_the_same_destination_is_refused(
    clients: AwsClients, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    first = outbox_tables(clients, 10)
    assert backfill_cli(monkeypatch, first, *FAST) == 0
    other_source = unique("src")
    create_table(clients.dynamodb, other_source)
    second = settings_for(
        other_source,
        first.destination_table,
        control_table=first.control_table,
        migration_id=unique("other"),
    )
    assert backfill_cli(monkeypatch, second, *FAST) == 2
    err = capsys.readouterr().err
    assert f"already belongs to migration '{first.migration_id}'" in err
    # The refusal wrote nothing for the second migration and left the first one's data alone.
    assert plan.plan_state(store_of(second, clients)) is None
    assert len(destination(clients.dynamodb, first.destination_table)) == 10


def test_refuses_to_start_before_the_consumer_and_names_the_risk(
    clients: AwsClients, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = outbox_tables(clients, 10)
    assert backfill_cli(monkeypatch, settings, "--page-size", "25") == 2
    err = capsys.readouterr().err
    assert "no stream consumer has started" in err
    assert "live writes made to the source before the stream consumer starts are LOST" in err
    # GIVEN a consumer recorded its start, THEN the same command runs
    store_of(settings, clients).put("CONSUMER#source", {"started_at": 1.0})
    assert backfill_cli(monkeypatch, settings, "--page-size", "25") == 0


def test_dry_run_shows_before_and_after_and_writes_nothing(
    clients: AwsClients, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = outbox_tables(clients, 12)
    assert backfill_cli(monkeypatch, settings, "--dry-run") == 0
    out = capsys.readouterr().out
    assert out.count("before: ") == 5
    assert out.count("after: ") == 5
    assert '"schema_version":2' in out
    assert "nothing was written" in out
    assert not store_of(settings, clients).exists()
    assert list(scan_all(clients.dynamodb, settings.destination_table)) == []
