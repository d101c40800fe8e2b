"""Backfill from a DynamoDB export (issue 16), through the real command, against moto's S3.

Exports are fixtures in DynamoDB's real layout (``tests.export_layout``): several gzip data
files (some of two gzip members), both manifests. moto's own export is used only for the
request and the point-in-time-recovery check (``export start``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsonschema
import pytest

from backfill import plan
from backfill.export.datafile import LineReader, verify
from backfill.export.engine import ExportEngine
from backfill.export.manifest import DataFile, read
from backfill.export.plan import refused
from backfill.lambda_handler import invoke
from backfill.worker import Options
from livemigrate.aws import AwsClients
from livemigrate.cli import main
from livemigrate.clock import FakeClock
from livemigrate.config import Settings
from livemigrate.control import ControlStore
from livemigrate.exitcodes import ExitCode
from livemigrate.items import to_typed
from livemigrate.migration import open_migration
from tests.export_layout import Written, gzip_lines, md5_b64, write_export
from tests.services import create_table, settings_for, unique
from tests.support.backfill import destination, expected, fill, outbox_items, settings_env

SCHEMA = Path(__file__).resolve().parents[2] / "livemigrate" / "status.schema.json"

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytestmark = pytest.mark.integration

FAST = ("--workers", "2", "--page-size", "7", "--lease-seconds", "5", "--budget-seconds", "90")


@pytest.fixture(scope="module")
def s3(clients: AwsClients) -> S3Client:
    import boto3

    client: S3Client = boto3.client("s3")
    return client


@pytest.fixture
def bucket(s3: S3Client) -> str:
    name = unique("exports")
    s3.create_bucket(Bucket=name)
    return name


def tables(clients: AwsClients, count: int) -> tuple[Settings, list[dict[str, Any]]]:
    source, dest = unique("src"), unique("dst")
    create_table(clients.dynamodb, source)
    create_table(clients.dynamodb, dest, stream=None)
    items = outbox_items(count)
    fill(clients.dynamodb, source, items)
    return settings_for(source, dest), [to_typed(it) for it in items]


def split(items: list[dict[str, Any]], parts: int) -> list[list[dict[str, Any]]]:
    return [items[n::parts] for n in range(parts)]


def consumer_started(settings: Settings, clients: AwsClients, at: float) -> ControlStore:
    """Record the source consumer's start (as ``livemigrate consume`` does first)."""
    store = ControlStore(clients.dynamodb, settings.control_table, settings.migration_id)
    store.ensure_table()
    store.put("CONSUMER#source", {"started_at": at, "start_position": "TRIM_HORIZON"})
    return store


def command(monkeypatch: pytest.MonkeyPatch, settings: Settings, *argv: str) -> int:
    for name, value in settings_env(settings).items():
        if name.startswith("LIVEMIGRATE_"):
            monkeypatch.setenv(name, value)
    return main(list(argv))


# -- the data file reader ----------------------------------------------------------------------
def test_verify_streams_checksum_count_and_etag_and_the_reader_resumes_at_a_line(
    s3: S3Client, bucket: str
) -> None:
    items = [to_typed(it) for it in outbox_items(23)]
    body = gzip_lines(items, members=3)
    etag = s3.put_object(Bucket=bucket, Key="f.json.gz", Body=body)["ETag"].strip('"')
    good = DataFile("f.json.gz", 23, md5_b64(body), etag)

    def check(data: DataFile) -> str | None:
        return verify(s3, bucket, data, lambda: None, lambda: 60.0).problem

    # GIVEN a file of three gzip members THEN it matches its manifest line, and nothing else does
    assert check(good) is None
    assert "itemCount is 24" in str(check(DataFile(good.key, 24, good.md5, etag)))
    assert "md5Checksum" in str(check(DataFile(good.key, 23, md5_b64(b"x"), etag)))
    assert "replaced" in str(check(DataFile(good.key, 23, good.md5, "0" * 32)))
    # WHEN pages of 10 are read, a page is asked for again, and a reader starts at line 20
    reader = LineReader(s3, bucket, good, etag, 10)
    first = reader.page(None)
    assert reader.page(None) is first  # a retried page is the same page, not the next one
    second = reader.page(first.last_key)
    third = reader.page(second.last_key)
    assert (first.last_key, second.last_key, third.last_key) == ({"line": 10}, {"line": 20}, None)
    assert first.items + second.items + third.items == items
    late = LineReader(s3, bucket, good, etag, 10).page({"line": 20})
    assert late.items == items[20:] and late.first_line == 20


# -- the command -------------------------------------------------------------------------------
def test_export_is_loaded_and_a_damaged_file_is_refused_with_nothing_written_from_it(
    clients: AwsClients,
    s3: S3Client,
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings, items = tables(clients, 60)
    store = consumer_started(settings, clients, time.time() - 5)
    files = split(items, 4)
    # GIVEN an export of 4 files taken after the consumer started, file 2 damaged at rest
    export = write_export(s3, bucket, files, time.time(), damaged=[2])
    # WHEN it is loaded
    code = command(monkeypatch, settings, "backfill", "--from-export", export.uri, *FAST)
    # THEN the 3 good files are in the destination, nothing of the damaged one, and the command
    # names it with exit 5; the plan is not complete, so the cutover's backfill gate stays shut
    err = capsys.readouterr().err
    assert code == ExitCode.NOT_MIGRATED, err
    assert export.data_keys[2] in err and "md5Checksum" in err
    loaded = destination(clients.dynamodb, settings.destination_table)
    want = expected(clients.dynamodb, settings.source_table)
    damaged_keys = {str(it["sk"]["S"]) for it in files[2]}
    assert loaded == {row for row in want if json.loads(row)["sk"] not in damaged_keys}
    assert plan.plan_state(store) != plan.COMPLETE
    (unit,) = [u for u in plan.units(store, plan.SEG_PREFIX) if u.item.get("state") == "refused"]
    assert unit.item["file_key"] == export.data_keys[2] and int(unit.item["items_read"]) == 0


def test_workers_stop_once_only_refused_files_are_left_not_at_the_budget(
    clients: AwsClients, s3: S3Client, bucket: str
) -> None:
    settings, items = tables(clients, 12)
    written = write_export(s3, bucket, split(items, 2), time.time(), damaged=[1])
    migration = open_migration(settings, clients)
    clock = FakeClock()  # idle workers' polls advance it; nothing else does
    options = Options(workers=2, page_size=5, budget_seconds=600)
    export = read(s3, bucket, written.folder)
    engine = ExportEngine(migration, options, s3, export, clock=clock)
    engine.plan()
    assert engine.run() is False
    # THEN the workers stopped once only the refused file was left, long before the budget
    assert clock.monotonic() < 120
    assert refused(migration.store)[0][0] == written.data_keys[1]


def test_export_taken_before_the_consumer_started_is_refused_naming_both_times(
    clients: AwsClients,
    s3: S3Client,
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings, items = tables(clients, 10)
    started = 1_900_000_000.0
    consumer_started(settings, clients, started)
    export = write_export(s3, bucket, [items], started - 60)
    code = command(monkeypatch, settings, "backfill", "--from-export", export.uri, *FAST)
    err = capsys.readouterr().err
    assert code == ExitCode.BAD_INPUT, err
    assert "2030-03-17T17:45:40+00:00" in err and "2030-03-17T17:46:40+00:00" in err
    assert "livemigrate export start" in err
    assert destination(clients.dynamodb, settings.destination_table) == set()


def test_scan_and_export_plans_never_mix_and_dry_run_writes_nothing(
    clients: AwsClients,
    s3: S3Client,
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings, items = tables(clients, 12)
    store = consumer_started(settings, clients, time.time() - 5)
    export: Written = write_export(s3, bucket, split(items, 2), time.time())
    dry = command(monkeypatch, settings, "backfill", "--from-export", export.uri, "--dry-run")
    out = capsys.readouterr().out
    assert dry == 0 and "5 sample item(s) of export" in out and "nothing was written" in out
    assert destination(clients.dynamodb, settings.destination_table) == set()
    assert command(monkeypatch, settings, "backfill", "--from-export", export.uri, *FAST) == 0
    assert plan.plan_state(store) == plan.COMPLETE
    # THEN a Scan backfill of the same migration is refused, naming the export to finish
    assert command(monkeypatch, settings, "backfill", *FAST) == ExitCode.BAD_INPUT
    assert f"--from-export {export.uri}" in capsys.readouterr().err


def test_export_start_needs_the_consumer_and_pitr_then_records_the_export(
    clients: AwsClients,
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings, _ = tables(clients, 3)
    start = ("export", "start", "--bucket", bucket, "--prefix", "p")
    # GIVEN no consumer THEN refused, naming the fix
    assert command(monkeypatch, settings, *start) == ExitCode.BAD_INPUT
    assert "livemigrate consume" in capsys.readouterr().err
    consumer_started(settings, clients, time.time() - 1)
    # GIVEN no point-in-time recovery THEN refused, naming the command that enables it
    assert command(monkeypatch, settings, *start) == ExitCode.BAD_INPUT
    assert "update-continuous-backups" in capsys.readouterr().err
    clients.dynamodb.update_continuous_backups(
        TableName=settings.source_table,
        PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True},
    )
    # WHEN both hold THEN the export is requested and recorded; status shows its progress
    assert command(monkeypatch, settings, *start, "--json") == 0
    requested = json.loads(capsys.readouterr().out)[0]
    assert requested["bucket"] == bucket and requested["export_arn"]
    assert command(monkeypatch, settings, "export", "status", "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert [e["export_arn"] for e in shown] == [requested["export_arn"]]
    assert shown[0]["status"] in ("IN_PROGRESS", "COMPLETED")
    # AND the migration's own status shows it too, in its published schema
    assert command(monkeypatch, settings, "status", "--json") == 0
    status = json.loads(capsys.readouterr().out)
    jsonschema.validate(status, json.loads(SCHEMA.read_text()))
    assert [(e["export_arn"], e["status"]) for e in status["exports"]] == [
        (requested["export_arn"], shown[0]["status"])
    ]


@dataclass
class FakeContext:
    millis: int

    def get_remaining_time_in_millis(self) -> int:
        return self.millis


def test_lambda_handler_loads_an_export_across_invocations(
    clients: AwsClients, s3: S3Client, bucket: str
) -> None:
    settings, items = tables(clients, 30)
    consumer_started(settings, clients, time.time() - 5)
    export = write_export(s3, bucket, split(items, 3), time.time())
    event = {"from_export": export.uri, "margin_seconds": 0.5, "page_size": 5, "workers": 2}
    results = []
    for _ in range(30):
        results.append(invoke(event, FakeContext(2500), settings, clients))
        if results[-1]["complete"]:
            break
    assert results[-1]["complete"] is True and results[-1]["refused_files"] == []
    assert results[-1]["blocked"] is False
    want = expected(clients.dynamodb, settings.source_table)
    assert destination(clients.dynamodb, settings.destination_table) == want


def test_lambda_handler_says_blocked_once_only_refused_files_are_left(
    clients: AwsClients, s3: S3Client, bucket: str
) -> None:
    # GIVEN an export of 2 files, the second damaged at rest
    settings, items = tables(clients, 20)
    consumer_started(settings, clients, time.time() - 5)
    export = write_export(s3, bucket, split(items, 2), time.time(), damaged=[1])
    event = {"from_export": export.uri, "margin_seconds": 0.5, "page_size": 5, "workers": 2}
    # WHEN the Step Functions loop invokes the function until it says complete or blocked
    results = []
    for _ in range(30):
        results.append(invoke(event, FakeContext(2500), settings, clients))
        if results[-1]["complete"] or results[-1]["blocked"]:
            break
    # THEN it says blocked (the state machine fails on it) once the good file is loaded, naming
    # the refused file; it never says complete
    last = results[-1]
    assert last["blocked"] is True and last["complete"] is False
    assert last["refused_files"] == [export.data_keys[1]]
    assert not any(r["blocked"] for r in results[:-1])
