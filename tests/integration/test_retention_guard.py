"""The retention guard through the real command (rule 9): a backfill whose ETA, measured after
its first pages, exceeds the retention minus the margin is refused with exit 7, naming the ETA
and the retention; ``--force`` goes on with a warning; status and the gates show it."""

from __future__ import annotations

import logging

import boto3
import pytest

from backfill import eta_guard
from livemigrate.aws import AwsClients, client_config
from livemigrate.control import ControlStore
from livemigrate.exitcodes import ExitCode
from livemigrate.gates import Policy, check_all, read_snapshot
from livemigrate.retention import HOUR, KINESIS, kinesis_retention
from livemigrate.status import collect, render
from tests.services import unique
from tests.support.backfill import backfill_cli, destination, outbox_tables

pytestmark = pytest.mark.integration

# The source keeps 24 h; a margin of 24 h less half a second leaves the backfill 0.5 s: a
# scripted slow run (at most 20 items/s, 60 items, ETA measured after 3 pages of 5: >= 2 s) is
# far over it on any machine.
MARGIN = str(24 * HOUR - 0.5)
SLOW = ("--without-consumer", "--workers", "1", "--page-size", "5")


def test_a_slow_backfill_is_refused_naming_the_eta_and_the_retention_then_forced(
    clients: AwsClients,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # GIVEN 60 items read at 20 items/s at most, and a limit of 0.5 s before the retention
    settings = outbox_tables(clients, count=60)
    monkeypatch.setenv("LIVEMIGRATE_READ_RATE", "20")
    monkeypatch.setenv("LIVEMIGRATE_RETENTION_MARGIN_SECONDS", MARGIN)
    monkeypatch.setattr(eta_guard, "CHECK_SECONDS", 0.5)
    # WHEN the backfill starts THEN it stops after its first pages with exit 7
    assert int(ExitCode.RETENTION_RISK) == 7
    assert backfill_cli(monkeypatch, settings, *SLOW) == ExitCode.RETENTION_RISK
    err = capsys.readouterr().err
    assert "backfill refused: the backfill's ETA is" in err
    assert "retention of 24 h (DynamoDB Streams)" in err
    assert "--force" in err
    copied = len(destination(clients.dynamodb, settings.destination_table))
    assert 15 <= copied < 45  # the first pages (and those in flight), not the table
    store = ControlStore(clients.dynamodb, settings.control_table, settings.migration_id)
    status = collect(store)
    assert status["retention"]["backfill_eta_seconds"] > 0.5
    assert "retention: 24 h (DynamoDB Streams)" in render(status)
    gate = {g.name: g for g in check_all(read_snapshot(store), Policy())}
    assert "backfill ETA" in gate["stream retention headroom"].why
    # WHEN forced THEN it finishes from the saved position, warning of the risk (the rest is
    # still slow: its own ETA is over the limit too)
    # At 5 items/s (a burst of one page) the rest cannot finish before the guard's first
    # measurement after 3 pages, however fast the machine: at 20/s it once did, unwarned.
    monkeypatch.setenv("LIVEMIGRATE_READ_RATE", "5")
    with caplog.at_level(logging.WARNING, "livemigrate.retention"):
        assert backfill_cli(monkeypatch, settings, *SLOW, "--force") == ExitCode.OK
    assert any("RETENTION RISK" in r.getMessage() for r in caplog.records)
    assert len(destination(clients.dynamodb, settings.destination_table)) == 60


def test_the_kinesis_retention_is_read_from_the_stream(moto_url: str) -> None:
    kinesis = boto3.client("kinesis", endpoint_url=moto_url, config=client_config(2))
    name = unique("retention")
    kinesis.create_stream(StreamName=name, ShardCount=1)
    kinesis.increase_stream_retention_period(StreamName=name, RetentionPeriodHours=72)
    retention = kinesis_retention(kinesis, name)
    assert (retention.kind, retention.seconds) == (KINESIS, 72 * HOUR)
    kinesis.delete_stream(StreamName=name)
