"""Search indexing throughput: the sink's path vs a plain ``helpers.bulk`` loop, per engine.

For each engine whose node answers (Elasticsearch on ``LIVEMIGRATE_ES_PORT``, OpenSearch on
``LIVEMIGRATE_OS_PORT``), both sides index the same documents into fresh indices on the same
node in the same run, 500 documents per bulk request: the baseline with that engine's own
client library (``elasticsearch.helpers.bulk`` / ``opensearchpy.helpers.bulk``), the sink
through ``livemigrate.search`` as ``search sync`` runs it. The sink's path includes what it does
for every stream record: typed image -> JSON-safe document, the version rule, conditional
writes. The baseline gets its documents ready-made (no conversion), so the comparison is
strict.

Each side runs ``ROUNDS`` times, in rounds whose order alternates (plain then sink, sink then
plain, ...) so neither side always meets the node fresh, or right after the other's segment
merges. Every round's ratio is reported and the median counts (the machines are shared and
noisy). Next to the rate, each side's client CPU per document (process user + system time,
every thread, over the timed part only) is reported: it depends little on the machine's load,
so it shows the client's own overhead where the rates are noise.
"""

from __future__ import annotations

import os
import statistics
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from bench.common import Result
from livemigrate.items import to_plain
from livemigrate.records import StreamRecord
from livemigrate.search.backend import ClientBackend, Engine
from livemigrate.search.batcher import BatchPolicy
from livemigrate.search.clients import backend_for
from livemigrate.search.documents import default_document, document_id
from livemigrate.search.sink import SearchSink
from livemigrate.search.targets import FixedTargets
from livemigrate.versioning import pad_seq

DOCS = int(os.environ.get("LIVEMIGRATE_BENCH_SEARCH_DOCS", "20000"))
ROUNDS = int(os.environ.get("LIVEMIGRATE_BENCH_SEARCH_ROUNDS", "4"))
BATCH = 500
MAX = 5 * 1024 * 1024
URLS: dict[Engine, str] = {
    "elasticsearch": f"http://127.0.0.1:{os.environ.get('LIVEMIGRATE_ES_PORT', '9299')}",
    "opensearch": f"http://127.0.0.1:{os.environ.get('LIVEMIGRATE_OS_PORT', '9399')}",
}

Docs = list[tuple[str, dict[str, Any]]]


@dataclass(frozen=True)
class Run:
    """One timed run: documents per second (wall) and client CPU seconds per document."""

    rate: float
    cpu: float


def timed(work: Callable[[], None], docs: int) -> Run:
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return Run(docs / wall, cpu / docs)


class NoLetters:
    def add(self, origin: Any, reason: str, raw: Any, key: Any) -> str:
        raise AssertionError(f"unexpected dead letter: {reason}")


def records(n: int) -> list[StreamRecord]:
    out = []
    for i in range(n):
        keys = {"pk": {"S": f"section-outbox|s{i % 97}|2024-05"}, "sk": {"S": f"{i:08d}"}}
        image = {
            **keys,
            "created_at": {"S": "2024-05-01T12:00:00+00:00"},
            "amount": {"N": str(i * 3)},
            "body": {"S": "lorem ipsum dolor sit amet " * 8},
            "tags": {"SS": ["a", "b", "c"]},
            "meta": {"M": {"v": {"N": "2"}, "ok": {"BOOL": True}}},
            "_lm_seq": {"S": pad_seq(str(10**22 + i))},
        }
        out.append(StreamRecord("INSERT", keys, image, None, pad_seq(str(10**22 + i)), time.time()))
    return out


def fresh(backend: ClientBackend) -> str:
    name = f"lmbench-{uuid.uuid4().hex[:10]}"
    backend.create_index(name, {"number_of_replicas": 0}, {})
    return name


def run_sink(backend: ClientBackend, recs: list[StreamRecord]) -> Run:
    index = fresh(backend)
    sink = SearchSink(backend, FixedTargets(index), NoLetters(), policy=BatchPolicy(BATCH))

    def work() -> None:
        for i in range(0, len(recs), 1000):  # the engine hands over GetRecords pages of 1000
            sink.apply(recs[i : i + 1000])

    try:
        run = timed(work, len(recs))
        assert backend.count(index) == len(recs)
        return run
    finally:
        sink.close()
        backend.delete_index(index)


def bulk_actions(index: str, docs: Docs) -> Iterator[dict[str, Any]]:
    return ({"_index": index, "_id": doc_id, "_source": doc} for doc_id, doc in docs)


def plain_bulk(engine: Engine, url: str) -> Callable[[str, Docs], int]:
    """The engine's own ``helpers.bulk`` over a client of its library."""
    if engine == "elasticsearch":
        from elasticsearch import Elasticsearch
        from elasticsearch.helpers import bulk as es_bulk

        es = Elasticsearch(url, request_timeout=120)

        def es_run(index: str, docs: Docs) -> int:
            ok, _ = es_bulk(es, bulk_actions(index, docs), chunk_size=BATCH, max_chunk_bytes=MAX)
            return ok

        return es_run
    from opensearchpy import OpenSearch
    from opensearchpy.helpers import bulk as os_bulk

    client = OpenSearch(hosts=[url], timeout=120)

    def os_run(index: str, docs: Docs) -> int:
        ok, _ = os_bulk(client, bulk_actions(index, docs), chunk_size=BATCH, max_chunk_bytes=MAX)
        return int(ok)

    return os_run


def run_plain(
    backend: ClientBackend, bulk: Callable[[str, Docs], int], recs: list[StreamRecord]
) -> Run:
    index = fresh(backend)
    docs = [
        (
            document_id(r.keys),
            {**default_document(to_plain(r.new_image or {})), "_lm_seq": r.sequence_number},
        )
        for r in recs
    ]
    written: list[int] = []
    try:
        run = timed(lambda: written.append(bulk(index, docs)), len(recs))
        assert written == [len(recs)] and backend.count(index) == len(recs)
        return run
    finally:
        backend.delete_index(index)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_cluster/health", timeout=5):
            return True
    except OSError:
        return False


def run_engine(engine: Engine, recs: list[StreamRecord]) -> Result:
    url = URLS[engine]
    backend = backend_for(engine, url, timeout=120)
    bulk = plain_bulk(engine, url)
    plain: list[Run] = []
    ours: list[Run] = []
    for i in range(ROUNDS):
        if i % 2 == 0:
            plain.append(run_plain(backend, bulk, recs))
            ours.append(run_sink(backend, recs))
        else:
            ours.append(run_sink(backend, recs))
            plain.append(run_plain(backend, bulk, recs))
    ratios = [o.rate / p.rate for o, p in zip(ours, plain, strict=True)]
    runs = ", ".join(f"{r:.2f}" for r in ratios)
    cpu_ours = statistics.median(r.cpu for r in ours) * 1e6
    cpu_plain = statistics.median(r.cpu for r in plain) * 1e6
    return Result(
        name=f"search: sink indexing on {engine} (vs helpers.bulk)",
        value=statistics.median(r.rate for r in ours),
        unit="docs/s",
        baseline=statistics.median(r.rate for r in plain),
        ratio=statistics.median(ratios),
        note=f"{DOCS} docs, {BATCH}/bulk, median of {ROUNDS} rounds in alternating order "
        f"(ratios {runs}); client CPU/doc {cpu_ours:.0f} us vs {cpu_plain:.0f} us; "
        "target ratio >= 0.9",
    )


def run() -> list[Result]:
    recs = records(DOCS)
    out = []
    for engine in ("elasticsearch", "opensearch"):
        if answers(URLS[engine]):
            out.append(run_engine(engine, recs))
        else:
            print(f"bench_search: no {engine} node at {URLS[engine]}; skipped")
    return out


if __name__ == "__main__":
    for result in run():
        print(result)
