"""Kinesis catch-up (issue 14): the built-in Kinesis reader vs a plain GetRecords + put loop.

A Kinesis stream (2 shards, moto) holds BACKLOG change records in the format of a table's
Kinesis streaming destination. The plain loop reads every shard from the trim horizon
(GetShardIterator + GetRecords), parses each record, runs the transform and put_items the
outputs: no leases, no checkpoints, no version rule. Then the consumer (leases, checkpoints,
conditional writes by the version rule, parallel apply) drains the same stream into its own
destination. Same server, same run, one after the other. Target: >= 0.8x the plain loop.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

from bench.bench_consumer import _clients, _name, _plain_apply, _table
from bench.common import Result
from livemigrate.aws import AwsClients
from livemigrate.clock import SystemClock
from livemigrate.config import Settings
from livemigrate.items import to_typed
from livemigrate.migration import Migration, open_migration
from stream_consumer.applier import DestinationApplier
from stream_consumer.engine import ConsumerOptions, Tuning, run_consumer
from stream_consumer.kinesis.bridge import create_stream, partition_key
from stream_consumer.kinesis.records import change_record, parse_kinesis_record
from stream_consumer.kinesis.source import KinesisShardSource
from stream_consumer.metrics import Metrics

BACKLOG = int(os.environ.get("LIVEMIGRATE_BENCH_KINESIS_RECORDS", "5000"))
JAN = 1704067200


def _change(n: int, micros: int, table: str) -> dict[str, Any]:
    outbox = n % 4 != 0
    image = to_typed(
        {
            "pk": "section-outbox|docket" if outbox else f"user|{n % 50}",
            "sk": f"i{n:06d}",
            "createdAt": JAN + n * 97,
            "body": "x" * 200,
        }
    )
    keys = {"pk": image["pk"], "sk": image["sk"]}
    return change_record("INSERT", keys, image, None, micros, table_name=table)


def _fill(clients: AwsClients, stream: str, table: str, count: int) -> None:
    """``count`` INSERT records, put 500 at a time (PutRecords), one call at a time: moto's
    Kinesis loses records put by concurrent PutRecords calls (seen: 995 of 1,000 with 4)."""
    assert clients.kinesis is not None
    kinesis = clients.kinesis
    start = int(time.time() * 1_000_000) - count
    records = [_change(n, start + n, table) for n in range(count)]

    def put(chunk: list[dict[str, Any]]) -> None:
        entries: list[Any] = [
            {"Data": json.dumps(r).encode(), "PartitionKey": partition_key(r["dynamodb"]["Keys"])}
            for r in chunk
        ]
        while entries:
            resp = kinesis.put_records(StreamName=stream, Records=entries)
            entries = [e for e, r in zip(entries, resp["Records"], strict=True) if "ErrorCode" in r]

    for i in range(0, count, 500):
        put(records[i : i + 500])


def _plain(clients: AwsClients, migration: Migration, stream: str, dest: str) -> int:
    """The baseline: every shard from the trim horizon, parse, transform, put_item."""
    assert clients.kinesis is not None
    kinesis = clients.kinesis
    done = 0
    for shard in kinesis.list_shards(StreamName=stream)["Shards"]:
        iterator: str | None = kinesis.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while iterator:
            page = kinesis.get_records(ShardIterator=iterator, Limit=1000)
            for raw in page["Records"]:
                record = parse_kinesis_record(raw["Data"], sequence_number=raw["SequenceNumber"])
                _plain_apply(clients, migration.transformer, dest, record)
            done += len(page["Records"])
            iterator = page.get("NextShardIterator")
            if not page["Records"]:
                break
    return done


def _tool(clients: AwsClients, migration: Migration, stream: str) -> tuple[float, float]:
    assert clients.kinesis is not None
    metrics = Metrics("source")
    applier = DestinationApplier.for_migration(migration, metrics, threads=16)
    start = time.perf_counter()
    run_consumer(
        KinesisShardSource(clients.kinesis, stream),
        applier,
        ConsumerOptions.for_source(
            migration,
            "bench",
            lease_seconds=30.0,
            clock=SystemClock(),
            tuning=Tuning(poll_interval=0.1),
        ),
        metrics=metrics,
        until_caught_up=True,
        stop_event=threading.Event(),
    )
    elapsed = time.perf_counter() - start
    applier.close()
    return metrics.value("records_applied_total"), elapsed


def bench_kinesis_catch_up(clients: AwsClients) -> list[Result]:
    assert clients.kinesis is not None
    source, dest, base_dest, stream = _name("ksrc"), _name("kdst"), _name("kplain"), _name("kin")
    _table(clients, source, stream=False)
    _table(clients, dest, stream=False)
    _table(clients, base_dest, stream=False)
    create_stream(clients.kinesis, stream, shards=2)
    _fill(clients, stream, source, BACKLOG)
    settings = Settings(
        migration_id=_name("mig"),
        source_table=source,
        destination_table=dest,
        control_table=_name("ctl"),
        change_source="kinesis",
        kinesis_stream=stream,
    )
    migration = open_migration(settings, clients)
    start = time.perf_counter()
    done = _plain(clients, migration, stream, base_dest)
    base_rate = done / (time.perf_counter() - start)
    applied, elapsed = _tool(clients, migration, stream)
    rate = applied / elapsed
    note = (
        f"{int(applied)} records (plain loop: {done}), 2 shards; tool: leases+checkpoints+"
        "version rule; goal >= 0.8x"
    )
    return [
        Result(
            f"kinesis catch-up, {BACKLOG} backlog",
            rate,
            "records/s",
            base_rate,
            rate / base_rate,
            note,
        )
    ]


def run() -> list[Result]:
    return bench_kinesis_catch_up(_clients())
