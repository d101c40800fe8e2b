"""Search indexing throughput: the sink's path vs a plain ``helpers.bulk`` loop, per engine.

For each engine whose node answers (Elasticsearch on ``LIVEMIGRATE_ES_PORT``, OpenSearch on
``LIVEMIGRATE_OS_PORT``), both sides index the same documents into fresh indices on the same
node in the same run, 500 documents per bulk request: the baseline with that engine's own
client library (``elasticsearch.helpers.bulk`` / ``opensearchpy.helpers.bulk``), the sink
through ``livemigrate.search`` as ``search sync`` runs it. The sink's path includes what it does
for every stream record: typed image -> JSON-safe document, the version rule, conditional
writes. The baseline gets its documents ready-made (no conversion), so the comparison is
strict.

In each of ``ROUNDS`` rounds both sides index all documents into their own fresh index, taking
turns every ``SLICE`` documents (who goes first alternates, slice by slice and round by round),
each side's time added up over its slices: the two sides meet the same moments of the shared
machine's load, which whole runs one after the other do not (their ratios ranged 0.5-1.5).
Every round's ratio is reported and the median counts. Next to the rate, each side's client
CPU per document (process user + system time, every thread, over its timed slices only) is
reported: it depends little on the machine's load, so it shows the client's own overhead where
the rates are noise.
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
from livemigrate.search.sink import Indexing, SearchSink
from livemigrate.search.targets import FixedTargets
from livemigrate.versioning import pad_seq

DOCS = int(os.environ.get("LIVEMIGRATE_BENCH_SEARCH_DOCS", "20000"))
ROUNDS = int(os.environ.get("LIVEMIGRATE_BENCH_SEARCH_ROUNDS", "4"))
BATCH = 500
SLICE = 2000  # documents each side indexes before the other takes its turn
PAGE = 1000  # the engine hands the sink GetRecords pages of 1000 records
MAX = 5 * 1024 * 1024
URLS: dict[Engine, str] = {
    "elasticsearch": f"http://127.0.0.1:{os.environ.get('LIVEMIGRATE_ES_PORT', '9299')}",
    "opensearch": f"http://127.0.0.1:{os.environ.get('LIVEMIGRATE_OS_PORT', '9399')}",
}

Docs = list[tuple[str, dict[str, Any]]]


@dataclass
class Meter:
    """Wall and client CPU seconds spent by one side, added up over its slices."""

    wall: float = 0.0
    cpu: float = 0.0

    def measure(self, work: Callable[[], None]) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        work()
        self.cpu += time.process_time() - cpu
        self.wall += time.perf_counter() - wall


@dataclass(frozen=True)
class Round:
    """One round's outcome per side: documents per second and client CPU seconds per doc."""

    sink_rate: float
    plain_rate: float
    sink_cpu: float
    plain_cpu: float


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


def ready_made(recs: list[StreamRecord]) -> Docs:
    """The baseline's documents: converted before the clock starts (see the module doc)."""
    return [
        (
            document_id(r.keys),
            {**default_document(to_plain(r.new_image or {})), "_lm_seq": r.sequence_number},
        )
        for r in recs
    ]


def run_round(
    backend: ClientBackend,
    bulk: Callable[[str, Docs], int],
    recs: list[StreamRecord],
    sink_first: bool,
) -> Round:
    """Both sides index all documents, taking turns slice by slice (see the module doc)."""
    docs = ready_made(recs)
    plain_index, sink_index = fresh(backend), fresh(backend)
    sink = SearchSink(
        backend, FixedTargets(sink_index), NoLetters(), Indexing(policy=BatchPolicy(BATCH))
    )
    plain, ours = Meter(), Meter()
    written: list[int] = []
    try:
        for at in range(0, len(recs), SLICE):

            def sink_slice(at: int = at) -> None:
                for i in range(at, min(at + SLICE, len(recs)), PAGE):
                    sink.apply(recs[i : min(i + PAGE, at + SLICE)])

            def plain_slice(at: int = at) -> None:
                written.append(bulk(plain_index, docs[at : at + SLICE]))

            turns = [(ours, sink_slice), (plain, plain_slice)]
            if sink_first != (at // SLICE % 2 == 0):  # who goes first alternates every slice
                turns.reverse()
            for meter, work in turns:
                meter.measure(work)
        assert sum(written) == len(recs) == backend.count(plain_index) == backend.count(sink_index)
    finally:
        sink.close()
        backend.delete_index(plain_index)
        backend.delete_index(sink_index)
    n = len(recs)
    return Round(n / ours.wall, n / plain.wall, ours.cpu / n, plain.cpu / n)


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
    rounds = [run_round(backend, bulk, recs, sink_first=i % 2 == 1) for i in range(ROUNDS)]
    ratios = [r.sink_rate / r.plain_rate for r in rounds]
    runs = ", ".join(f"{r:.2f}" for r in ratios)
    cpu_ours = statistics.median(r.sink_cpu for r in rounds) * 1e6
    cpu_plain = statistics.median(r.plain_cpu for r in rounds) * 1e6
    return Result(
        name=f"search: sink indexing on {engine} (vs helpers.bulk)",
        value=statistics.median(r.sink_rate for r in rounds),
        unit="docs/s",
        baseline=statistics.median(r.plain_rate for r in rounds),
        ratio=statistics.median(ratios),
        note=f"{DOCS} docs, {BATCH}/bulk, median of {ROUNDS} rounds, sides taking turns "
        f"every {SLICE} docs (ratios {runs}); "
        f"client CPU/doc {cpu_ours:.0f} us vs {cpu_plain:.0f} us; target ratio >= 0.9",
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
