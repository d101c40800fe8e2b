"""Export backfill benchmarks (issue 16) against the moto server, each beside a plain baseline.

1. Throughput: ``backfill --from-export`` items/s (it verifies every file in a first streaming
   pass, then loads it) vs a plain loop that streams the same gzip files, parses each line,
   transforms it and does the same conditional puts at the same concurrency (target >= 0.9).
2. Memory: peak memory of an export backfill process loading a 10k-item vs a 40k-item export
   of 4 files each (files 4x larger; target <= 1.1): the tracemalloc peak (Python heap) is the
   figure, ru_maxrss in the note. As in bench_backfill, the transform writes 1 item in 20 to
   keep the run short on moto; every item is still streamed, verified, parsed and transformed.
"""

from __future__ import annotations

import gzip
import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import boto3

from backfill.export.engine import ExportEngine
from backfill.export.manifest import Export, read
from backfill.worker import Options
from bench.bench_backfill import WORKERS, _clients, _drop, _env, _item, _name, _put, _table
from bench.common import Result, plain_dynamodb, take_turns
from livemigrate.aws import make_clients
from livemigrate.config import Settings
from livemigrate.items import to_typed
from livemigrate.migration import open_migration
from livemigrate.values import from_dynamodb_json
from tests.export_layout import write_export

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_s3 import S3Client

FILES = 4
THREADS = 8


def _s3() -> S3Client:
    client: S3Client = boto3.client("s3")
    return client


def _export(s3: S3Client, bucket: str, count: int) -> Export:
    items = [to_typed(_item(i, 0.0)) for i in range(count)]
    written = write_export(s3, bucket, [items[n::FILES] for n in range(FILES)], time.time())
    return read(s3, bucket, written.folder)


def _settings(source: str, dest: str, control: str, transform: str | None = None) -> Settings:
    # The source table exists (open_migration checks it) but is empty: the export is the data.
    return Settings(
        migration_id=_name("mig"),
        source_table=source,
        destination_table=dest,
        control_table=control,
        transform=transform or "livemigrate.examples.hot_outbox:transform",
    )


def run_tool(s3: S3Client, export: Export, control: str, options: Options) -> float:
    """Seconds for a complete export backfill into a fresh destination."""
    clients = _clients()
    source = _table(clients.dynamodb, _name("src"), stream=True)
    dest = _table(clients.dynamodb, _name("dst"), stream=False)
    settings = _settings(source, dest, control)
    migration = open_migration(settings, clients)
    started = time.perf_counter()
    engine = ExportEngine(migration, options, s3, export)
    if not engine.run():  # plans first, as `livemigrate backfill` does in one process
        raise RuntimeError("benchmark export backfill did not complete")
    elapsed = time.perf_counter() - started
    _drop(clients.dynamodb, dest, source)
    return elapsed


def run_baseline(s3: S3Client, client: DynamoDBClient, export: Export) -> float:
    """A plain loop: each file streamed and gunzipped by its own thread, puts on a shared pool."""
    dest = _table(client, _name("dst"), stream=False)
    put: Callable[[dict[str, Any]], None] = _put(client, dest)
    pool = ThreadPoolExecutor(WORKERS * THREADS)

    def load(key: str) -> None:
        body = s3.get_object(Bucket=export.bucket, Key=key)["Body"]
        page: list[dict[str, Any]] = []
        with gzip.GzipFile(fileobj=body) as lines:
            for line in lines:
                page.append(from_dynamodb_json(json.loads(line)["Item"]))
                if len(page) == 250:
                    list(pool.map(put, page))
                    page = []
        list(pool.map(put, page))

    started = time.perf_counter()
    with ThreadPoolExecutor(WORKERS) as readers:
        list(readers.map(load, [f.key for f in export.files]))
    elapsed = time.perf_counter() - started
    pool.shutdown()
    _drop(client, dest)
    return elapsed


def bench_throughput(s3: S3Client, bucket: str, control: str) -> Result:
    count, rounds = 1500, 4
    export = _export(s3, bucket, count)
    options = Options(workers=WORKERS, write_threads=THREADS, page_size=250)
    plain = plain_dynamodb()
    turns = take_turns(
        lambda: run_tool(s3, export, control, options),
        lambda: run_baseline(s3, plain, export),
        rounds,
    )
    return Result(
        "export backfill items/s (conditional puts, 32 concurrent)",
        rounds * count / sum(turns.tool),
        "items/s",
        rounds * count / sum(turns.base),
        turns.median,
        f"{count} items in {FILES} gzip files, {rounds} rounds in turns; ratio: their median "
        f"({turns.listed()}); baseline: plain stream-gunzip-put loop, same puts; target >= 0.9",
    )


def _child_peak(spec: dict[str, str]) -> tuple[float, float]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.bench_export", json.dumps(spec)],
        check=True,
        capture_output=True,
        text=True,
    )
    traced, rss = out.stdout.strip().splitlines()[-1].split()
    return float(traced), float(rss)


def bench_memory(s3: S3Client, bucket: str, control: str) -> Result:
    small_n, large_n = 10_000, 40_000
    peaks = []
    for count in (small_n, large_n):
        export = _export(s3, bucket, count)
        peaks.append(_child_peak({"bucket": bucket, "folder": export.folder, "control": control}))
    (small_mb, small_rss), (large_mb, large_rss) = peaks
    return Result(
        f"export backfill peak heap {large_n // 1000}k vs {small_n // 1000}k items",
        large_mb,
        "MiB",
        small_mb,
        large_mb / small_mb,
        f"tracemalloc peak, large / small ({FILES} files 4x larger); target <= 1.1; ru_maxrss "
        f"{large_rss:.0f} vs {small_rss:.0f} MiB ({large_rss / small_rss:.2f}); 4 workers, "
        "pages of 500; 1 in 20 items written",
    )


def run() -> list[Result]:
    _env()
    s3 = _s3()
    bucket, control = _name("exports"), _name("control")
    s3.create_bucket(Bucket=bucket)
    results = [bench_throughput(s3, bucket, control), bench_memory(s3, bucket, control)]
    _drop(_clients().dynamodb, control)
    return results


def _memory_child(spec: dict[str, str]) -> None:
    tracemalloc.start()
    _env()
    clients = make_clients(None, max_pool=100)
    s3 = _s3()
    source = _table(clients.dynamodb, _name("src"), stream=True)
    dest = _table(clients.dynamodb, _name("dst"), stream=False)
    settings = _settings(source, dest, spec["control"], "bench.bench_backfill:sampled_transform")
    export = read(s3, spec["bucket"], spec["folder"])
    options = Options(workers=WORKERS, page_size=500)
    engine = ExportEngine(open_migration(settings, clients), options, s3, export)
    if not engine.run():  # plans first, as `livemigrate backfill` does in one process
        raise SystemExit("export backfill did not complete")
    _drop(clients.dynamodb, dest, source)
    _, peak = tracemalloc.get_traced_memory()
    print(peak / 2**20, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


if __name__ == "__main__":
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    _memory_child(json.loads(sys.argv[1]))
