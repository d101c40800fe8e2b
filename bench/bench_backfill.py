"""Backfill benchmarks against the moto server, each next to a plain baseline in the same run.

1. Throughput: backfill items/s vs a plain script that scans the source and does the same
   transform + conditional puts at the same concurrency, on a client of its own (target ratio
   >= 0.95, issue 18).
2. Skew: with 25 ms of latency injected before every request (a botocore ``before-send``
   hook on both tools' clients, to model the network), makespan(skewed) / makespan(uniform)
   at the same worker count, where half of the skewed table's items share one partition key;
   livemigrate (target <= 1.3) next to a plain one-segment-per-worker parallel Scan.
3. Memory: peak memory of a backfill process on a 10k-item vs a 40k-item table (target
   < 1.2): the tracemalloc peak (Python heap) is the figure; the process's ru_maxrss is in the
   note (it also moves with glibc's per-thread arenas). To keep the run short on moto
   (~200 puts/s), that transform writes 1 item in 20; every item is still read, converted
   and transformed.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from backfill.worker import Engine, Options
from bench.common import Result, plain_dynamodb, take_turns
from livemigrate.aws import AwsClients, make_clients
from livemigrate.config import Settings
from livemigrate.control import condition_failed
from livemigrate.examples.hot_outbox import transform as hot_outbox
from livemigrate.items import to_plain, to_typed
from livemigrate.migration import open_migration
from livemigrate.tables import create_table
from livemigrate.versioning import BACKFILL_SEQ, MIGRATION_ATTR, SEQ_ATTR

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

ENDPOINT = os.environ.get("LIVEMIGRATE_BENCH_ENDPOINT", "http://127.0.0.1:4599")
LATENCY = 0.025
HOT = "section-outbox|docket"
WORKERS = 4


def _env() -> None:
    os.environ.update(
        AWS_ENDPOINT_URL=ENDPOINT,
        AWS_REGION="us-east-1",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ACCESS_KEY_ID=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
        AWS_SECRET_ACCESS_KEY=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
    )


def _name(prefix: str) -> str:
    return f"bench-{prefix}-{os.urandom(4).hex()}"


def _clients(latency: float = 0.0) -> AwsClients:
    clients = make_clients(None, max_pool=100)
    if latency:

        def delay(**_: Any) -> None:
            time.sleep(latency)

        clients.dynamodb.meta.events.register("before-send.dynamodb", delay)
    return clients


def _table(client: DynamoDBClient, name: str, stream: bool) -> str:
    create_table(client, name, stream="NEW_AND_OLD_IMAGES" if stream else None, wait=False)
    return name


def _item(i: int, hot_share: float) -> dict[str, Any]:
    every = round(1 / hot_share) if hot_share else 0
    pk = HOT if every and i % every == 0 else f"section-outbox|u{i % 397:03d}"
    return {
        "pk": pk,
        "sk": f"msg-{i:07d}",
        "createdAt": Decimal(1_700_000_000 + i * 60),
        "body": f"payload {i} " + "x" * 80,
    }


def _fill(client: DynamoDBClient, table: str, count: int, hot_share: float = 0.0) -> None:
    def write(start: int) -> None:
        batch = [
            {"PutRequest": {"Item": to_typed(_item(i, hot_share))}}
            for i in range(start, min(count, start + 25))
        ]
        pending: Any = {table: batch}
        while pending:
            pending = client.batch_write_item(RequestItems=pending).get("UnprocessedItems")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(write, range(0, count, 25)))


def _source(client: DynamoDBClient, count: int, hot_share: float = 0.0) -> str:
    name = _table(client, _name("src"), stream=True)
    _fill(client, name, count, hot_share)
    return name


def _drop(client: DynamoDBClient, *tables: str) -> None:
    # The shared moto server keeps everything in memory: give it back.
    for table in tables:
        client.delete_table(TableName=table)


# -- the tool --------------------------------------------------------------------------------
def _settings(source: str, dest: str, control: str) -> Settings:
    return Settings(
        migration_id=_name("mig"),
        source_table=source,
        destination_table=dest,
        control_table=control,
    )


def run_tool(clients: AwsClients, source: str, options: Options, control: str) -> float:
    """Seconds for a complete backfill of ``source`` into a fresh destination."""
    dest = _table(clients.dynamodb, _name("dst"), stream=False)
    migration = open_migration(_settings(source, dest, control), clients)
    started = time.perf_counter()
    engine = Engine(migration, options)
    if not engine.run():  # plans first, as `livemigrate backfill` does in one process
        raise RuntimeError("benchmark backfill did not complete")
    elapsed = time.perf_counter() - started
    _drop(clients.dynamodb, dest)
    return elapsed


# -- the plain baseline ----------------------------------------------------------------------
def _put(client: DynamoDBClient, table: str) -> Callable[[dict[str, Any]], None]:
    def put(raw: dict[str, Any]) -> None:
        for out in hot_outbox(to_plain(raw)):
            item = {**to_typed(out), SEQ_ATTR: {"S": BACKFILL_SEQ}, MIGRATION_ATTR: {"S": "b"}}
            try:
                client.put_item(
                    TableName=table, Item=item, ConditionExpression="attribute_not_exists(pk)"
                )
            except client.exceptions.ClientError as exc:
                if not condition_failed(exc):
                    raise

    return put


def run_baseline(
    client: DynamoDBClient,
    source: str,
    segments: int,
    threads: int,
    page: int,
    *,
    shared_pool: bool,
) -> float:
    """A plain parallel Scan (one segment per worker) doing conditional puts.

    ``shared_pool``: all workers' puts go through one pool of ``segments * threads`` (the
    throughput baseline); otherwise each worker has its own ``threads`` (the naive fan-out of
    the skew baseline, where the worker holding the hot key works alone).
    """
    dest = _table(client, _name("dst"), stream=False)
    put = _put(client, dest)
    shared = ThreadPoolExecutor(segments * threads) if shared_pool else None

    def segment(n: int) -> None:
        kwargs: dict[str, Any] = {
            "TableName": source,
            "Segment": n,
            "TotalSegments": segments,
            "Limit": page,
        }
        own = None if shared else ThreadPoolExecutor(threads)
        pool = shared or own
        assert pool is not None
        while True:
            resp = client.scan(**kwargs)
            list(pool.map(put, resp.get("Items", [])))
            if "LastEvaluatedKey" not in resp:
                break
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]
        if own is not None:
            own.shutdown()

    started = time.perf_counter()
    with ThreadPoolExecutor(segments) as scanners:
        list(scanners.map(segment, range(segments)))
    elapsed = time.perf_counter() - started
    if shared is not None:
        shared.shutdown()
    _drop(client, dest)
    return elapsed


# -- the benchmarks --------------------------------------------------------------------------
def bench_throughput(control: str) -> Result:
    count, threads, rounds = 1500, 8, 16
    clients = _clients()
    plain = plain_dynamodb()
    source = _source(clients.dynamodb, count)
    options = Options(workers=WORKERS, write_threads=threads, page_size=250)

    def tool() -> float:
        return run_tool(clients, source, options, control)

    def base() -> float:
        return run_baseline(plain, source, WORKERS, threads, 250, shared_pool=True)

    turns = take_turns(tool, base, rounds)
    _drop(clients.dynamodb, source)
    return Result(
        "backfill items/s (conditional puts, 32 concurrent)",
        rounds * count / sum(turns.tool),
        "items/s",
        rounds * count / sum(turns.base),
        turns.median,
        f"{count} items, {rounds} rounds in turns; ratio: their median ({turns.listed()}); "
        "baseline: plain parallel Scan + same puts; target >= 0.95",
    )


def bench_skew(control: str) -> list[Result]:
    count = 800
    clients = _clients(LATENCY)
    plain = _clients()
    uniform = _source(plain.dynamodb, count)
    skewed = _source(plain.dynamodb, count, hot_share=0.5)
    options = Options(
        workers=WORKERS,
        write_threads=1,
        page_size=50,
        hot_pages=2,
        hot_min_items=100,
        lease_seconds=60,
    )
    tool_u = tool_s = base_u = base_s = 0.0
    for _ in range(2):  # interleaved: the shared machine's load drifts
        tool_u += run_tool(clients, uniform, options, control)
        base_u += run_baseline(clients.dynamodb, uniform, WORKERS, 1, 50, shared_pool=False)
        tool_s += run_tool(clients, skewed, options, control)
        base_s += run_baseline(clients.dynamodb, skewed, WORKERS, 1, 50, shared_pool=False)
    _drop(plain.dynamodb, uniform, skewed)
    note = (
        f"{count} items, half under one pk; {WORKERS} workers, 1 put in flight each, "
        f"{LATENCY * 1000:.0f} ms/request injected; sums of 2 interleaved runs"
    )
    return [
        Result(
            "backfill makespan skewed/uniform (lower is better)",
            tool_s / tool_u,
            "ratio",
            base_s / base_u,
            (tool_s / tool_u) / (base_s / base_u),
            f"value: livemigrate, baseline: plain segment scan; target <= 1.3; {note}",
        ),
        Result(
            "backfill makespan skewed, seconds",
            tool_s,
            "s",
            base_s,
            tool_s / base_s,
            f"uniform: livemigrate {tool_u:.1f}s, baseline {base_u:.1f}s (2 runs each)",
        ),
    ]


def _child_peak(source: str, control: str) -> tuple[float, float]:
    """(tracemalloc peak, ru_maxrss) in MiB of a separate process backfilling ``source``."""
    args = json.dumps({"source": source, "control": control})
    out = subprocess.run(
        [sys.executable, "-m", "bench.bench_backfill", args],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "LIVEMIGRATE_TRANSFORM": "bench.bench_backfill:sampled_transform"},
    )
    traced, rss = out.stdout.strip().splitlines()[-1].split()
    return float(traced), float(rss)


def sampled_transform(item: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The example transform, keeping 1 item in 20 (memory bench: reads dominate, not puts)."""
    if int(str(item["sk"]).rsplit("-", 1)[1]) % 20 == 0:
        yield from hot_outbox(item)


def bench_memory(control: str) -> Result:
    small_n, large_n = 10_000, 40_000
    clients = _clients()
    small = _source(clients.dynamodb, small_n)
    small_mb, small_rss = _child_peak(small, control)
    _drop(clients.dynamodb, small)
    large = _source(clients.dynamodb, large_n)
    large_mb, large_rss = _child_peak(large, control)
    _drop(clients.dynamodb, large)
    return Result(
        f"backfill peak heap {large_n // 1000}k vs {small_n // 1000}k items",
        large_mb,
        "MiB",
        small_mb,
        large_mb / small_mb,
        f"tracemalloc peak, large / small; target < 1.2; ru_maxrss {large_rss:.0f} vs "
        f"{small_rss:.0f} MiB ({large_rss / small_rss:.2f}); 4 workers, pages of 500; "
        "1 in 20 items written",
    )


def run() -> list[Result]:
    _env()
    control = _name("control")
    results = [bench_throughput(control)]
    results.extend(bench_skew(control))
    results.append(bench_memory(control))
    _drop(_clients().dynamodb, control)
    return results


def _memory_child(spec: dict[str, str]) -> None:
    tracemalloc.start()
    _env()
    clients = make_clients(None, max_pool=100)
    dest = _table(clients.dynamodb, _name("dst"), stream=False)
    settings = Settings(
        migration_id=_name("mig"),
        source_table=spec["source"],
        destination_table=dest,
        control_table=spec["control"],
        transform="bench.bench_backfill:sampled_transform",
    )
    # 4 segments of pages of 500: both tables reach the steady state of full pages in flight.
    options = Options(workers=WORKERS, page_size=500, total_segments=WORKERS)
    engine = Engine(open_migration(settings, clients), options)
    if not engine.run():  # plans first, as `livemigrate backfill` does in one process
        raise SystemExit("backfill did not complete")
    _drop(clients.dynamodb, dest)
    _, peak = tracemalloc.get_traced_memory()
    print(peak / 2**20, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


if __name__ == "__main__":
    _memory_child(json.loads(sys.argv[1]))
