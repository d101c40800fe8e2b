"""Stream consumer benchmarks on moto (127.0.0.1:4599), each side by side with a plain loop.

1. Replication lag under a steady write load (RATE writes/s for SECONDS): the time from the source
   write (a stamp in the item) to the moment its destination write is durable. The consumer,
   then a plain GetRecords + put loop, each under the same load on its own table.
2. Catch-up throughput after a 10,000-record backlog: the consumer (leases, checkpoints,
   conditional writes, parallel apply) vs a plain GetRecords + transform + put_item loop, on
   the same stream, one after the other. Target: >= 0.8x the plain loop.
3. Catch-up of a 2,000-delete backlog with real deletes (backfill complete): the consumer's
   delete vs a plain loop's one delete_item per REMOVE, on the same stream, one after the
   other; as is (one conditional delete), with an inverse transform configured (still one:
   the reverse consumer skips the forward consumer's deletes before the cutover by time), and
   once a cutover has armed the flag (a conditional mark, then a conditional delete on it).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.common import Result
from livemigrate.aws import AwsClients, make_clients
from livemigrate.clock import SystemClock
from livemigrate.config import Settings
from livemigrate.flag import ControlFlagStore
from livemigrate.items import to_plain, to_typed
from livemigrate.keys import PLAN
from livemigrate.migration import BACKFILL_COMPLETE, Migration, open_migration
from livemigrate.records import StreamRecord
from livemigrate.tables import PK_SK, create_table
from livemigrate.transform import Transformer
from stream_consumer.applier import DestinationApplier
from stream_consumer.engine import ConsumerOptions, Tuning, run_consumer
from stream_consumer.metrics import Metrics
from stream_consumer.source import BotoShardSource

ENDPOINT = "http://127.0.0.1:4599"
# moto is one Python process: on a 2-core machine it saturates near 80 source writes/s plus
# their stream reads and destination writes, so the steady load stays below that (at 200/s
# neither the tool nor the plain loop keeps up and lag only measures moto's backlog).
RATE = 50  # writes/s
SECONDS = 10.0
POLL = 0.1
BACKLOG = 10_000
DELETES = 2_000
KEY_NAMES = tuple(name for name, _ in PK_SK)  # every bench table has the default key schema
JAN = 1704067200


def _clients() -> AwsClients:
    os.environ.setdefault("AWS_ENDPOINT_URL", ENDPOINT)
    os.environ.setdefault("AWS_REGION", "us-east-1")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    return make_clients(None, max_pool=64)


def _name(prefix: str) -> str:
    return f"bench-{prefix}-{int(time.time() * 1000) % 10**9}"


def _table(clients: AwsClients, name: str, stream: bool) -> None:
    create_table(
        clients.dynamodb, name, stream="NEW_AND_OLD_IMAGES" if stream else None, wait=False
    )


def _migration(clients: AwsClients, source: str, inverse: str | None = None) -> Migration:
    dest = _name("dst")
    _table(clients, dest, stream=False)
    settings = Settings(
        migration_id=_name("mig"),
        source_table=source,
        destination_table=dest,
        control_table=_name("ctl"),
        inverse_transform=inverse,
    )
    return open_migration(settings, clients)


def _item(n: int) -> dict[str, Any]:
    outbox = n % 4 != 0
    return to_typed(
        {
            "pk": "section-outbox|docket" if outbox else f"user|{n % 50}",
            "sk": f"i{n:06d}",
            "createdAt": JAN + n * 97,
            "stamp": str(time.time()),
            "body": "x" * 200,
        }
    )


class StampSink:
    """Remembers, for every record applied, how long ago its source write happened."""

    def __init__(self, inner: DestinationApplier) -> None:
        self.inner = inner
        self.lags: list[float] = []

    def apply(self, records: Sequence[StreamRecord]) -> None:
        self.inner.apply(records)
        _stamp(records, self.lags)


def _stamp(records: Sequence[StreamRecord], into: list[float]) -> None:
    now = time.time()
    for r in records:
        if r.new_image and "stamp" in r.new_image:
            into.append(now - float(r.new_image["stamp"]["S"]))


def _plain_loop(
    clients: AwsClients,
    transformer: Transformer,
    arn: str,
    *,
    dest: str,
    stop: threading.Event,
    lags: list[float] | None = None,
    until_empty: bool = False,
) -> int:
    """The baseline: GetRecords, transform, put_item, one by one; no leases, no checkpoints."""
    streams = clients.streams
    shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
    it = streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")
    iterator: str | None = it["ShardIterator"]
    done = 0
    while iterator and not stop.is_set():
        page = streams.get_records(ShardIterator=iterator, Limit=1000)
        records = [StreamRecord.from_boto(r) for r in page["Records"]]
        for r in records:
            _plain_apply(clients, transformer, dest, r)
        if lags is not None:
            _stamp(records, lags)
        done += len(records)
        iterator = page.get("NextShardIterator")
        if not records:
            if until_empty:
                return done
            time.sleep(0.1)
    return done


def _plain_apply(
    clients: AwsClients, transformer: Transformer, dest: str, record: StreamRecord
) -> None:
    """put_item of each output of NewImage; for a REMOVE, delete_item of each OldImage output."""
    if record.new_image is not None:
        for out in transformer.run(to_plain(record.new_image)):
            clients.dynamodb.put_item(TableName=dest, Item=out)
    elif record.old_image is not None:
        for out in transformer.run(to_plain(record.old_image)):
            key = {name: out[name] for name in KEY_NAMES}
            clients.dynamodb.delete_item(TableName=dest, Key=key)


def _write_steady(clients: AwsClients, table: str, rate: float, seconds: float) -> int:
    start = time.time()
    n = 0
    with ThreadPoolExecutor(4) as pool:
        while time.time() - start < seconds:
            due = start + n / rate
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
            pool.submit(clients.dynamodb.put_item, TableName=table, Item=_item(n))
            n += 1
    return n


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _lag_tool(clients: AwsClients) -> tuple[list[float], int]:
    source = _name("lag")
    _table(clients, source, stream=True)
    migration = _migration(clients, source)
    stop = threading.Event()
    sink = StampSink(DestinationApplier.for_migration(migration, Metrics("source")))
    options = ConsumerOptions.for_source(
        migration,
        "bench",
        lease_seconds=30.0,
        clock=SystemClock(),
        tuning=Tuning(poll_interval=POLL),
    )
    source_of_lag = BotoShardSource(clients.streams, str(migration.source.stream_arn))
    # A typed call in a lambda: Thread(args=..., kwargs=...) hid a stale signature from mypy.
    tool = threading.Thread(
        target=lambda: run_consumer(source_of_lag, sink, options, stop_event=stop)
    )
    tool.start()
    written = _write_steady(clients, source, RATE, SECONDS)
    _drain(sink.lags, written)
    stop.set()
    tool.join()
    sink.inner.close()
    return sink.lags, written


def _lag_plain(clients: AwsClients) -> tuple[list[float], int]:
    source = _name("lagplain")
    _table(clients, source, stream=True)
    migration = _migration(clients, source)
    stop = threading.Event()
    lags: list[float] = []
    base = threading.Thread(
        target=_plain_loop,
        args=(clients, migration.transformer, str(migration.source.stream_arn)),
        kwargs={"dest": migration.settings.destination_table, "stop": stop, "lags": lags},
    )
    base.start()
    written = _write_steady(clients, source, RATE, SECONDS)
    _drain(lags, written)
    stop.set()
    base.join()
    return lags, written


def _drain(lags: list[float], written: int) -> None:
    deadline = time.time() + 60
    while len(lags) < written and time.time() < deadline:
        time.sleep(0.1)


def bench_lag(clients: AwsClients) -> list[Result]:
    """Tool then plain loop, each on its own table under the same steady load."""
    tool_lags, written = _lag_tool(clients)
    plain_lags, _ = _lag_plain(clients)
    note = (
        f"{written} writes at {RATE}/s, {POLL}s idle poll both; applied {len(tool_lags)} "
        f"(plain {len(plain_lags)}); lower is better"
    )
    results = []
    for q, label in ((0.5, "p50"), (0.99, "p99")):
        value = _percentile(tool_lags, q) * 1000
        baseline = _percentile(plain_lags, q) * 1000
        results.append(
            Result(
                f"consumer replication lag {label}", value, "ms", baseline, value / baseline, note
            )
        )
    return results


def _backlog(clients: AwsClients, table: str, count: int) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda n: clients.dynamodb.put_item(TableName=table, Item=_item(n)), range(count)
            )
        )


def _catch_up_tool(clients: AwsClients, migration: Migration, arn: str) -> tuple[Metrics, float]:
    """The consumer drains the stream to its end; its metrics and the seconds it took."""
    metrics = Metrics("source")
    applier = DestinationApplier.for_migration(migration, metrics, threads=16)
    start = time.perf_counter()
    run_consumer(
        BotoShardSource(clients.streams, arn),
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
    )
    elapsed = time.perf_counter() - start
    applier.close()
    return metrics, elapsed


def _side_by_side(
    clients: AwsClients, migration: Migration, arn: str, base_dest: str
) -> tuple[int, float, Metrics, float]:
    """The plain loop, then the tool, each draining the same stream: records and rates."""
    start = time.perf_counter()
    done = _plain_loop(
        clients,
        migration.transformer,
        arn,
        dest=base_dest,
        stop=threading.Event(),
        until_empty=True,
    )
    base_rate = done / (time.perf_counter() - start)
    metrics, elapsed = _catch_up_tool(clients, migration, arn)
    return done, base_rate, metrics, metrics.value("records_applied_total") / elapsed


def bench_catch_up(clients: AwsClients) -> list[Result]:
    source = _name("backlog")
    _table(clients, source, stream=True)
    _backlog(clients, source, BACKLOG)
    migration = _migration(clients, source)
    arn = str(migration.source.stream_arn)
    base_dest = _name("plain")
    _table(clients, base_dest, stream=False)
    done, base_rate, metrics, rate = _side_by_side(clients, migration, arn, base_dest)
    applied = metrics.value("records_applied_total")
    note = f"{int(applied)} records (plain loop: {done}); tool: leases+checkpoints+conditional"
    return [
        Result(
            "consumer catch-up, 10k backlog", rate, "records/s", base_rate, rate / base_rate, note
        )
    ]


def _delete_backlog(clients: AwsClients, count: int, inverse: str | None) -> tuple[Migration, str]:
    """A source whose stream holds only ``count`` REMOVEs; both destinations hold the items.

    The items are written before the stream is enabled, so the stream starts with the deletes.
    The tool's destination gets them as the backfill leaves them (put_if_absent, backfill
    stamp), the plain loop's as plain transformed puts. Batch writes where the path does not
    matter keep the set-up short.
    """
    source = _name("delsrc")
    _table(clients, source, stream=False)
    items = [_item(n) for n in range(count)]
    _batch_write(clients, source, [{"PutRequest": {"Item": i}} for i in items])
    clients.dynamodb.update_table(
        TableName=source,
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )
    migration = _migration(clients, source, inverse)
    base_dest = _name("delplain")
    _table(clients, base_dest, stream=False)
    outputs = [out for i in items for out in migration.transformer.run(to_plain(i))]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(migration.writer.put_if_absent, outputs))
    _batch_write(clients, base_dest, [{"PutRequest": {"Item": o}} for o in outputs])
    keys = [{name: i[name] for name in KEY_NAMES} for i in items]
    _batch_write(clients, source, [{"DeleteRequest": {"Key": k}} for k in keys])
    return migration, base_dest


def _batch_write(clients: AwsClients, table: str, requests: list[dict[str, Any]]) -> None:
    for at in range(0, len(requests), 25):  # the BatchWriteItem maximum
        pending: Any = {table: requests[at : at + 25]}
        while pending:
            pending = clients.dynamodb.batch_write_item(RequestItems=pending)["UnprocessedItems"]


def _count(clients: AwsClients, table: str) -> int:
    page = clients.dynamodb.scan(TableName=table, Select="COUNT", ConsistentRead=True)
    return int(page["Count"])  # a few items at most after a drain: one page


def bench_delete_catch_up(
    clients: AwsClients, inverse: str | None = None, *, armed: bool = False
) -> list[Result]:
    """Catch-up of a backlog of deletes only, with real deletes (the backfill is complete).

    A delete is one conditional delete, with or without an inverse transform (a reverse
    consumer tells the forward consumer's deletes before the cutover by time); once a cutover
    has armed the flag it is a conditional mark, then a delete on that mark.

    The destinations are pre-loaded (as after a backfill) and the stream holds only the
    REMOVEs, so the figure is the delete path alone: a stream of puts then deletes would spend
    half its time on puts (measured by the catch-up benchmark above), and where a put and the
    delete of one key share a batch the consumer folds them into one write the plain loop
    does not save.
    """
    migration, base_dest = _delete_backlog(clients, DELETES, inverse)
    arn = str(migration.source.stream_arn)
    migration.store.put(PLAN, {"state": BACKFILL_COMPLETE, "completed_at": time.time()})
    if armed:
        flags = ControlFlagStore(migration.store)
        flag = flags.read()
        flags.write(flag.armed(time.time()), flag.epoch)
    done, base_rate, metrics, rate = _side_by_side(clients, migration, arn, base_dest)
    applied = metrics.value("records_applied_total")
    left = _count(clients, migration.settings.destination_table)
    note = (
        f"{int(applied)} REMOVEs (plain loop: {done}); tool: "
        f"{'mark+delete' if armed else 'conditional delete'}, "
        f"{int(metrics.value('deletes_total'))} deleted, "
        f"{int(metrics.value('tombstones_written_total'))} tombstones; "
        f"left in D: {left} (plain {_count(clients, base_dest)})"
    )
    return [
        Result(
            "consumer catch-up, 2k deletes" + _delete_label(inverse, armed),
            rate,
            "records/s",
            base_rate,
            rate / base_rate,
            note,
        )
    ]


def _delete_label(inverse: str | None, armed: bool) -> str:
    if armed:
        return ", marked (cutover armed)"
    return ", reverse configured" if inverse else ""


def run() -> list[Result]:
    clients = _clients()
    inverse = "livemigrate.examples.hot_outbox:inverse"
    return [
        *bench_lag(clients),
        *bench_catch_up(clients),
        *bench_delete_catch_up(clients),
        *bench_delete_catch_up(clients, inverse=inverse),
        *bench_delete_catch_up(clients, inverse=inverse, armed=True),
    ]
