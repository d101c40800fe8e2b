"""Stream consumer benchmarks on moto (127.0.0.1:4599), each side by side with a plain loop.

1. Replication lag under a steady write load (RATE writes/s for SECONDS): the time from the source
   write (a stamp in the item) to the moment its destination write is durable. The consumer,
   then a plain GetRecords + put loop, each under the same load on its own table.
2. Catch-up throughput after a 10,000-record backlog: the consumer (leases, checkpoints,
   conditional writes, parallel apply) vs a plain GetRecords + transform + put_item loop, on
   the same stream, one after the other. Target: >= 0.8x the plain loop.
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
from livemigrate.items import to_plain, to_typed
from livemigrate.migration import Migration, open_migration
from livemigrate.records import StreamRecord
from livemigrate.tables import create_table
from livemigrate.transform import Transformer
from stream_consumer.applier import DestinationApplier
from stream_consumer.engine import Tuning, run_consumer
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


def _migration(clients: AwsClients, source: str) -> Migration:
    dest = _name("dst")
    _table(clients, dest, stream=False)
    settings = Settings(
        migration_id=_name("mig"),
        source_table=source,
        destination_table=dest,
        control_table=_name("ctl"),
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
            if r.new_image is not None:
                for out in transformer.run(to_plain(r.new_image)):
                    clients.dynamodb.put_item(TableName=dest, Item=out)
        if lags is not None:
            _stamp(records, lags)
        done += len(records)
        iterator = page.get("NextShardIterator")
        if not records:
            if until_empty:
                return done
            time.sleep(0.1)
    return done


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
    tool = threading.Thread(
        target=run_consumer,
        args=(
            BotoShardSource(clients.streams, str(migration.source.stream_arn)),
            migration.store,
            "source",
            sink,
        ),
        kwargs={
            "worker_id": "bench",
            "lease_seconds": 30.0,
            "clock": SystemClock(),
            "dead_letters": migration.dead_letters,
            "origin": "stream",
            "tuning": Tuning(poll_interval=POLL),
            "stop_event": stop,
        },
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


def bench_catch_up(clients: AwsClients) -> list[Result]:
    source = _name("backlog")
    _table(clients, source, stream=True)
    _backlog(clients, source, BACKLOG)
    migration = _migration(clients, source)
    arn = str(migration.source.stream_arn)
    base_dest = _name("plain")
    _table(clients, base_dest, stream=False)
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
    metrics = Metrics("source")
    applier = DestinationApplier.for_migration(migration, metrics, threads=16)
    start = time.perf_counter()
    run_consumer(
        BotoShardSource(clients.streams, arn),
        migration.store,
        "source",
        applier,
        worker_id="bench",
        lease_seconds=30.0,
        clock=SystemClock(),
        dead_letters=migration.dead_letters,
        origin="stream",
        tuning=Tuning(poll_interval=0.1),
        metrics=metrics,
        until_caught_up=True,
    )
    elapsed = time.perf_counter() - start
    applier.close()
    applied = metrics.value("records_applied_total")
    rate = applied / elapsed
    note = f"{int(applied)} records (plain loop: {done}); tool: leases+checkpoints+conditional"
    return [
        Result(
            "consumer catch-up, 10k backlog", rate, "records/s", base_rate, rate / base_rate, note
        )
    ]


def run() -> list[Result]:
    clients = _clients()
    return [*bench_lag(clients), *bench_catch_up(clients)]
