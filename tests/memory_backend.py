"""An in-memory ``DocumentStore`` for unit tests: the engines' optimistic concurrency.

tests/integration/test_search_contract.py runs the same contract over this backend,
Elasticsearch and OpenSearch, so what the unit tests assume is what the engines do.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from livemigrate.errors import SearchUnavailable
from livemigrate.search.backend import BulkAction, BulkResult, Held


class MemoryBackend:
    """Enough of an index for the sink: OCC writes, real-time gets, scripted failures."""

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, tuple[dict[str, Any], int]]] = {}
        self.next_seq_no = 0
        self.reject: dict[str, list[BulkResult]] = {}  # id -> results to return first
        self.unavailable = 0  # whole requests to fail
        self.bulk_calls: list[list[str]] = []
        self.reads: list[list[str]] = []  # the ids of every held() call

    def index_docs(self, index: str) -> dict[str, dict[str, Any]]:
        return {k: src for k, (src, _) in self.docs.get(index, {}).items()}

    def held(self, index: str, ids: Sequence[str]) -> dict[str, Held]:
        self.reads.append(list(ids))
        out = {}
        for doc_id in ids:
            if doc_id in self.docs.get(index, {}):
                src, seq_no = self.docs[index][doc_id]
                out[doc_id] = Held(
                    str(src.get("_lm_seq", "")), bool(src.get("_lm_tomb")), seq_no, 1
                )
        return out

    def bulk(self, actions: Sequence[BulkAction]) -> list[BulkResult]:
        if self.unavailable:
            self.unavailable -= 1
            raise SearchUnavailable("429 es_rejected_execution_exception")
        self.bulk_calls.append([a.id for a in actions])
        return [self._one(a) for a in actions]

    def _one(self, a: BulkAction) -> BulkResult:
        queued = self.reject.get(a.id)
        if queued:
            return queued.pop(0)
        docs = self.docs.setdefault(a.index, {})
        present = docs.get(a.id)
        if a.op == "create" and present is not None:
            return BulkResult(409, "version_conflict_engine_exception", "exists")
        if a.if_seq_no is not None and (present is None or present[1] != a.if_seq_no):
            return BulkResult(409, "version_conflict_engine_exception", "changed")
        if a.op == "delete":
            if present is None:
                return BulkResult(404)
            del docs[a.id]
            return BulkResult(200)
        self.next_seq_no += 1
        source = json.loads(a.source) if isinstance(a.source, str) else dict(a.source or {})
        docs[a.id] = (source, self.next_seq_no)
        return BulkResult(201 if present is None else 200)
