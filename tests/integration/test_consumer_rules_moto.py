"""The version/tombstone scenarios on moto through the real DestinationWriter; the Lambda handler;
validation before anything is read; stream faults and trimmed parents on the scripted stream."""

from __future__ import annotations

import logging
import urllib.request
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from livemigrate.aws import AwsClients
from livemigrate.cli import main
from livemigrate.control import ControlStore
from livemigrate.destination import DestinationWriter
from livemigrate.items import key_id, to_plain, to_typed
from livemigrate.migration import Migration, open_migration
from livemigrate.records import ApplyFailure, StreamRecord
from livemigrate.replication import FORWARD, written_by
from livemigrate.versioning import SEQ_ATTR, user_attributes
from stream_consumer import lambda_handler
from stream_consumer.applier import DestinationApplier
from stream_consumer.engine import Consumer, ConsumerOptions, Tuning
from stream_consumer.lambda_handler import handle
from stream_consumer.metrics import Metrics, serve
from stream_consumer.scripted import SEQ_BASE, SEQ_STRIDE, ScriptedStream, ScriptedTable
from stream_consumer.source import BotoShardSource
from stream_consumer.tombstones import tombstones
from tests.services import StreamTail, create_table, scan_all, settings_for, unique
from tests.support.backfill import settings_env
from tests.support.consumer_model import Scenario, expected, play, scenarios

FAST = Tuning(batch_size=10, poll_interval=0.02, discover_interval=0.1, heartbeat_interval=0.1)


@pytest.fixture(scope="module")
def moto_writer(clients: AwsClients) -> DestinationWriter:
    table = unique("model")
    create_table(clients.dynamodb, table, stream=None)
    return DestinationWriter(clients.dynamodb, table, ("pk", "sk"), "m1")


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(scenarios(section="placeholder"))
def test_rules_hold_on_moto_through_the_real_writer(
    moto_writer: DestinationWriter, s: Scenario
) -> None:
    # Each example owns its own partition keys in the shared table.
    s = Scenario(**{**s.__dict__, "section": uuid.uuid4().hex[:12]})
    prefix = f"section-outbox|{s.section}"

    def mine() -> list[dict[str, Any]]:
        return [
            i
            for i in scan_all(moto_writer.client, moto_writer.table)
            if i["pk"]["S"].startswith(prefix)
        ]

    source = play(
        s,
        moto_writer,
        lambda: [t for t in tombstones(moto_writer) if t[0]["pk"]["S"].startswith(prefix)],
    )
    held = {key_id({"pk": i["pk"], "sk": i["sk"]}): user_attributes(to_plain(i)) for i in mine()}
    assert all("_lm_tomb" not in i for i in mine())
    want = {key_id(to_typed({"pk": v["pk"], "sk": v["sk"]})): v for v in expected(source).values()}
    assert held == want


# -- Lambda handler ------------------------------------------------------------------------


@pytest.fixture
def migration(clients: AwsClients) -> Migration:
    source, dest = unique("src"), unique("dst")
    create_table(clients.dynamodb, source)
    create_table(clients.dynamodb, dest, stream=None)
    return open_migration(settings_for(source, dest), clients)


def stream_records(clients: AwsClients, migration: Migration) -> list[dict[str, Any]]:
    src = BotoShardSource(clients.streams, str(migration.source.stream_arn))
    (shard,) = src.list_shards()
    return [dict(r) for r in src.get_records(src.iterator(shard.shard_id, None), 1000).records]


def lambda_event(raws: list[dict[str, Any]]) -> dict[str, Any]:
    """As Lambda delivers them: creation time as epoch seconds."""
    out = []
    for raw in raws:
        body = dict(raw["dynamodb"])
        body["ApproximateCreationDateTime"] = body["ApproximateCreationDateTime"].timestamp()
        out.append({**raw, "dynamodb": body})
    return {"Records": out}


def test_lambda_dead_letters_a_bad_record_and_applies_the_rest(
    clients: AwsClients, migration: Migration
) -> None:
    table = migration.settings.source_table
    for n, created in enumerate([1704067200, None, 1706745600]):
        item: dict[str, Any] = {"pk": "section-outbox|docket", "sk": f"s{n}"}
        if created:
            item["createdAt"] = created
        clients.dynamodb.put_item(TableName=table, Item=to_typed(item))
    applier = DestinationApplier.for_migration(migration, Metrics("source"))
    response = handle(
        lambda_event(stream_records(clients, migration)), applier, migration.dead_letters
    )
    assert response == {"batchItemFailures": []}
    assert migration.dead_letters.count() == 1
    dest = [to_plain(i) for i in scan_all(clients.dynamodb, migration.settings.destination_table)]
    assert sorted(i["pk"] for i in dest) == [
        "section-outbox|docket|2024-01",
        "section-outbox|docket|2024-02",
    ]
    applier.close()


class FailsAt:
    """Applies records before ``index`` through the real applier, then fails retryably."""

    def __init__(self, inner: DestinationApplier, index: int) -> None:
        self.inner = inner
        self.index = index

    def apply(self, records: Sequence[StreamRecord]) -> None:
        self.inner.apply(records[: self.index])
        raise ApplyFailure(self.index, "destination throttled", retryable=True)


def test_lambda_reports_the_first_failure_and_everything_after_it(
    clients: AwsClients, migration: Migration
) -> None:
    for n in range(5):
        item = {"pk": f"user|{n}", "sk": "x", "createdAt": 1704067200 + n}
        clients.dynamodb.put_item(TableName=migration.settings.source_table, Item=to_typed(item))
    raws = stream_records(clients, migration)
    applier = DestinationApplier.for_migration(migration, Metrics("source"))
    response = handle(lambda_event(raws), FailsAt(applier, 2), migration.dead_letters)
    want = [r["dynamodb"]["SequenceNumber"] for r in raws[2:]]
    assert [f["itemIdentifier"] for f in response["batchItemFailures"]] == want
    held = list(scan_all(clients.dynamodb, migration.settings.destination_table))
    assert len(held) == 2
    applier.close()


# -- validation before anything is read ------------------------------------------------------


def test_consume_refuses_a_source_without_new_and_old_images(
    clients: AwsClients, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    source, dest = unique("src"), unique("dst")
    create_table(clients.dynamodb, source, stream="KEYS_ONLY")
    create_table(clients.dynamodb, dest, stream=None)
    s = settings_for(source, dest)
    for name in ("migration_id", "source_table", "destination_table", "control_table"):
        monkeypatch.setenv(f"LIVEMIGRATE_{name.upper()}", str(getattr(s, name)))
    assert main(["consume", "--until-caught-up"]) == 2
    err = capsys.readouterr().err
    assert "NEW_AND_OLD_IMAGES" in err and "fix:" in err
    # nothing was read or recorded: the control table was not even created
    assert not ControlStore(clients.dynamodb, s.control_table, s.migration_id).exists()
    monkeypatch.setenv("LIVEMIGRATE_TRANSFORM", "no_such_module:transform")
    create_table(clients.dynamodb, source + "-ok")
    monkeypatch.setenv("LIVEMIGRATE_SOURCE_TABLE", source + "-ok")
    assert main(["consume", "--until-caught-up"]) == 2
    assert "cannot be imported" in capsys.readouterr().err


def test_consume_until_caught_up_in_process_serves_metrics(
    clients: AwsClients, migration: Migration, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = migration.settings
    for name in ("migration_id", "source_table", "destination_table", "control_table"):
        monkeypatch.setenv(f"LIVEMIGRATE_{name.upper()}", str(getattr(s, name)))
    for n in range(3):
        item = {"pk": f"user|{n}", "sk": "x", "createdAt": 1704067200 + n}
        clients.dynamodb.put_item(TableName=s.source_table, Item=to_typed(item))
    assert main(["consume", "--until-caught-up", "--poll-interval", "0.05"]) == 0
    assert len(list(scan_all(clients.dynamodb, s.destination_table))) == 3
    consumer = migration.store.get("CONSUMER#source")
    assert consumer is not None and consumer["start_position"] == "TRIM_HORIZON"


def test_metrics_are_served_as_prometheus_text() -> None:
    metrics = Metrics("source")
    metrics.inc("records_applied_total", 7, shard="s1")
    metrics.set("lag_seconds", 1.5, shard="s1")
    server = serve(metrics, 0, host="127.0.0.1")
    try:
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    assert 'livemigrate_consumer_records_applied_total{consumer="source",shard="s1"} 7' in text
    assert "# TYPE livemigrate_consumer_lag_seconds gauge" in text


# -- faults and trimmed parents (scripted stream) ----------------------------------------------


def scripted_consumer(migration: Migration, stream: ScriptedStream, worker: str = "w1") -> Consumer:
    metrics = Metrics("source")
    applier = DestinationApplier.for_migration(migration, metrics, threads=2)
    return Consumer(
        stream,
        applier,
        ConsumerOptions(
            store=migration.store,
            name="source",
            worker_id=worker,
            lease_seconds=5,
            clock=stream.clock,
            dead_letters=migration.dead_letters,
            origin="stream",
            tuning=FAST,
        ),
        metrics=metrics,
    )


def put(table: ScriptedTable, n: int) -> None:
    table.put(to_typed({"pk": f"user|{n}", "sk": "x", "createdAt": 1704067200 + n}))


def test_expired_iterators_and_throttling_are_retried_and_counted(migration: Migration) -> None:
    stream = ScriptedStream(shards=1)
    table = ScriptedTable(stream)
    for n in range(30):
        put(table, n)
    stream.inject("throttled", "expired", "error", "throttled")
    consumer = scripted_consumer(migration, stream)
    assert consumer.run(until_caught_up=True)
    assert consumer.metrics.value("throttled_total") == 2
    assert consumer.metrics.value("iterators_expired_total") == 1
    assert consumer.metrics.value("read_errors_total") == 1
    assert consumer.metrics.value("records_applied_total") == 30
    assert (
        len(list(scan_all(migration.clients.dynamodb, migration.settings.destination_table))) == 30
    )


def test_a_parent_trimmed_before_it_was_finished_is_reported_and_its_children_proceed(
    migration: Migration, caplog: pytest.LogCaptureFixture
) -> None:
    stream = ScriptedStream(shards=1)
    table = ScriptedTable(stream)
    for n in range(30):
        put(table, n)
    (parent,) = stream.open_shards()
    consumer = scripted_consumer(migration, stream)
    consumer.start()
    consumer.step()  # one batch of the parent: started, not finished
    assert parent in consumer.readers
    consumer.shutdown()
    stream.split(parent)
    for n in range(30, 40):
        put(table, n)
    stream.trim(parent)  # retention took the rest of the parent
    caplog.set_level(logging.ERROR, "livemigrate.consumer")
    again = scripted_consumer(migration, stream, "w2")
    assert again.run(until_caught_up=True)
    assert any("LOST" in r.getMessage() and parent in r.getMessage() for r in caplog.records)
    assert again.metrics.value("trimmed_total") == 1
    state = migration.store.get(f"SHARD#source#{parent}")
    assert state is not None and state["finished"] and state["trimmed"]
    held = {
        to_plain(i)["pk"]
        for i in scan_all(migration.clients.dynamodb, migration.settings.destination_table)
    }
    assert {f"user|{n}" for n in range(30, 40)} <= held  # the children were read
    assert "user|29" not in held  # the trimmed tail is really lost (and was reported)


def test_checkpoint_past_retention_restarts_at_the_trim_horizon_loudly(
    migration: Migration, caplog: pytest.LogCaptureFixture
) -> None:
    stream = ScriptedStream(shards=1)
    table = ScriptedTable(stream)
    for n in range(25):
        put(table, n)
    (shard,) = stream.open_shards()
    first = scripted_consumer(migration, stream)
    first.start()
    first.step()
    first.shutdown()
    stream.trim_records(shard, 20)
    caplog.set_level(logging.ERROR, "livemigrate.consumer")
    again = scripted_consumer(migration, stream, "w2")
    assert again.run(until_caught_up=True)
    assert again.metrics.value("trimmed_total") == 1
    assert any("past the stream retention" in r.getMessage() for r in caplog.records)
    state = migration.store.get(f"SHARD#source#{shard}")
    assert state is not None
    assert str(state["checkpoint"]).lstrip("0") == str(SEQ_BASE + 24 * SEQ_STRIDE)


def test_moto_stream_seq_is_stored_with_every_applied_item(
    clients: AwsClients, migration: Migration
) -> None:
    clients.dynamodb.put_item(
        TableName=migration.settings.source_table,
        Item=to_typed({"pk": "user|1", "sk": "x", "createdAt": 1704067200}),
    )
    raws = stream_records(clients, migration)
    applier = DestinationApplier.for_migration(migration, Metrics("source"))
    applier.apply([StreamRecord.from_boto(r) for r in raws])
    applier.apply([StreamRecord.from_boto(r) for r in raws])  # a replay is a no-op
    (held,) = list(scan_all(clients.dynamodb, migration.settings.destination_table))
    assert held[SEQ_ATTR]["S"] == raws[0]["dynamodb"]["SequenceNumber"].zfill(40)
    assert applier.metrics.value("writes_stale_total") == 1
    applier.close()


@pytest.mark.parametrize("inverse", [None, "livemigrate.examples.hot_outbox:inverse"])
def test_lambda_entry_point_deletes_with_one_write_before_a_cutover(
    clients: AwsClients,
    monkeypatch: pytest.MonkeyPatch,
    inverse: str | None,
) -> None:
    source, dest = unique("src"), unique("dst")
    create_table(clients.dynamodb, source)
    create_table(clients.dynamodb, dest)  # with a stream: the reverse consumer would read it
    migration = open_migration(settings_for(source, dest), clients)
    # GIVEN the function configured like the migration (with or without an inverse transform)
    env = settings_env(migration.settings)
    if inverse:
        env["LIVEMIGRATE_INVERSE_TRANSFORM"] = inverse
    for name, value in env.items():
        if name.startswith(("LIVEMIGRATE_", "AWS_")):
            monkeypatch.setenv(name, value)
    monkeypatch.setattr(lambda_handler, "_STATE", {})
    migration.store.put("PLAN", {"state": "complete"})  # deletes are real
    table = migration.settings.source_table
    key = {"pk": "section-outbox|docket", "sk": "gone"}
    clients.dynamodb.put_item(TableName=table, Item=to_typed({**key, "createdAt": 1704067200}))
    # WHEN the event source mapping delivers the put, then the delete
    response = lambda_handler.handler(lambda_event(stream_records(clients, migration)), None)
    clients.dynamodb.delete_item(TableName=table, Key=to_typed(key))
    delete = stream_records(clients, migration)[1:]
    assert (
        lambda_handler.handler(lambda_event(delete), None) == response == {"batchItemFailures": []}
    )
    # THEN the delete is one conditional delete, with or without an inverse transform: no
    # cutover is coming, and the reverse consumer skips it by time (livemigrate.replication)
    assert not list(scan_all(clients.dynamodb, migration.settings.destination_table))
    dest_stream = StreamTail(clients, migration.settings.destination_table).drain()
    removes = [r for r in dest_stream if r.event_name == "REMOVE"]
    assert len(removes) == 1 and not written_by(FORWARD, removes[0])
