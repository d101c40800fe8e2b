"""Search indexing throughput: the sink's path vs plain ``elasticsearch.helpers.bulk``.

Both index the same documents into fresh indices on the same node in the same run, 500
documents per bulk request. The sink's path includes what it does for every stream record:
typed image -> JSON-safe document, the version check (one real-time ``_mget`` per batch) and
conditional writes. The baseline gets its documents ready-made (no conversion), so the
comparison is strict. Each side runs three times, alternating; the best run of each counts.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from elasticsearch import Elasticsearch
from elasticsearch.helpers import bulk

from bench.common import Result
from livemigrate.items import to_plain
from livemigrate.records import StreamRecord
from livemigrate.search.backend import ElasticsearchBackend
from livemigrate.search.batcher import BatchPolicy
from livemigrate.search.documents import default_document, document_id
from livemigrate.search.sink import SearchSink
from livemigrate.search.targets import FixedTargets
from livemigrate.versioning import pad_seq

DOCS = int(os.environ.get("LIVEMIGRATE_BENCH_SEARCH_DOCS", "20000"))
BATCH = 500
ES_URL = os.environ.get(
    "LIVEMIGRATE_SEARCH_URL", f"http://127.0.0.1:{os.environ.get('LIVEMIGRATE_ES_PORT', '9299')}"
)


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


def fresh(es: Elasticsearch) -> str:
    name = f"lmbench-{uuid.uuid4().hex[:10]}"
    es.indices.create(index=name, settings={"number_of_replicas": 0})
    return name


def run_sink(es: Elasticsearch, recs: list[StreamRecord]) -> float:
    index = fresh(es)
    try:
        sink = SearchSink(
            ElasticsearchBackend(es), FixedTargets(index), NoLetters(), policy=BatchPolicy(BATCH)
        )
        start = time.perf_counter()
        for i in range(0, len(recs), BATCH * 4):  # the engine hands over GetRecords pages
            sink.apply(recs[i : i + BATCH * 4])
        elapsed = time.perf_counter() - start
        assert es.count(index=index)["count"] >= 0
        es.indices.refresh(index=index)
        assert es.count(index=index)["count"] == len(recs)
        return len(recs) / elapsed
    finally:
        es.indices.delete(index=index)


def run_plain(es: Elasticsearch, recs: list[StreamRecord]) -> float:
    index = fresh(es)
    docs = [
        (
            document_id(r.keys),
            {**default_document(to_plain(r.new_image or {})), "_lm_seq": r.sequence_number},
        )
        for r in recs
    ]
    try:
        start = time.perf_counter()
        ok, _ = bulk(
            es,
            ({"_index": index, "_id": doc_id, "_source": doc} for doc_id, doc in docs),
            chunk_size=BATCH,
            max_chunk_bytes=5 * 1024 * 1024,
        )
        elapsed = time.perf_counter() - start
        es.indices.refresh(index=index)
        assert ok == len(recs) == es.count(index=index)["count"]
        return len(recs) / elapsed
    finally:
        es.indices.delete(index=index)


def run() -> list[Result]:
    es = Elasticsearch(ES_URL, request_timeout=120)
    recs = records(DOCS)
    plain, ours = [], []
    for _ in range(3):
        plain.append(run_plain(es, recs))
        ours.append(run_sink(es, recs))
    value, baseline = max(ours), max(plain)
    return [
        Result(
            name="search: sink indexing (vs helpers.bulk)",
            value=value,
            unit="docs/s",
            baseline=baseline,
            ratio=value / baseline,
            note=f"{DOCS} docs, {BATCH}/bulk, best of 3; target ratio >= 0.8",
        )
    ]
