"""Destination-vs-search verification: the same bucket digests, over documents.

A destination item's expected document is the default search document
(``livemigrate.search.documents``: JSON-safe, ``_lm_*`` removed) under the document id of its
key. The index side is every document of the live index, without ``_lm_*`` fields, tombstone
documents excluded. Differing buckets get a document-level diff; each difference is read again
(consistent DynamoDB read, real-time Elasticsearch get) after a wait, so documents the search
sink was still writing are not reported.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from livemigrate.clock import Clock
from livemigrate.items import TypedItem
from livemigrate.search.backend import SearchBackend
from livemigrate.search.documents import build_document, default_document, document_id
from livemigrate.tables import TableInfo
from livemigrate.verify.digest import Digests, batches, bucket_of, choose_buckets, is_tombstone
from livemigrate.verify.engine import KINDS, VerifyOptions
from livemigrate.versioning import TOMBSTONE_ATTR, user_attributes

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

Doc = dict[str, Any]


def doc_hash(doc: Mapping[str, Any]) -> int:
    text = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")


def index_doc(source: Mapping[str, Any]) -> Doc | None:
    """An index document as comparable with a destination item (None for a tombstone)."""
    if source.get(TOMBSTONE_ATTR):
        return None
    return user_attributes(source)


@dataclass
class SearchReport:
    index: str
    passed: bool = False
    documents: int = 0
    destination_items: int = 0
    differing_buckets: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    examples: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: {k: [] for k in KINDS}
    )

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "passed": self.passed,
            "documents": self.documents,
            "destination_items": self.destination_items,
            "differing_buckets": self.differing_buckets,
            **self.counts,
            "examples": self.examples,
        }


class SearchVerifier:
    """Compares the destination table with one search index."""

    def __init__(
        self,
        dynamodb: DynamoDBClient,
        destination: TableInfo,
        backend: SearchBackend,
        index: str,
        *,
        options: VerifyOptions,
        clock: Clock,
    ) -> None:
        self.dynamodb = dynamodb
        self.destination = destination
        self.backend = backend
        self.index = index
        self.options = options
        self.clock = clock

    def _table_docs(self) -> Any:
        kwargs: dict[str, Any] = {"TableName": self.destination.name, "ConsistentRead": True}
        while True:
            page = self.dynamodb.scan(**kwargs)
            for item in page.get("Items", []):
                if not is_tombstone(item):
                    yield self._doc_of(item)
            if "LastEvaluatedKey" not in page:
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def _doc_of(self, item: TypedItem) -> tuple[str, Doc | None]:
        key = {name: item[name] for name in self.destination.key_names}
        return document_id(key), build_document(default_document, item)

    def _index_docs(self) -> Any:
        for doc_id, source in self.backend.scan(self.index):
            yield doc_id, index_doc(source)

    def run(self) -> SearchReport:
        report = SearchReport(self.index)
        n = self.options.buckets or choose_buckets(
            self.destination.item_count, self.options.per_bucket
        )
        table, index = Digests(n), Digests(n)
        for digests, docs in ((table, self._table_docs()), (index, self._index_docs())):
            for doc_id, doc in docs:
                if doc is not None:
                    digests.add(bucket_of(doc_id, n), doc_hash(doc))
        report.destination_items, report.documents = table.total, index.total
        differing = table.differing(index)
        report.differing_buckets = len(differing)
        sizes = [max(a, b) for a, b in zip(table.counts, index.counts, strict=True)]
        for group in batches(differing, sizes, self.options.max_items_in_memory):
            self._diff(n, set(group), report)
        report.passed = not any(report.counts.values())
        return report

    def _collect(self, docs: Any, n: int, wanted: set[int]) -> dict[str, Doc]:
        return {
            doc_id: doc
            for doc_id, doc in docs
            if doc is not None and bucket_of(doc_id, n) in wanted
        }

    def _diff(self, n: int, wanted: set[int], report: SearchReport) -> None:
        expected = self._collect(self._table_docs(), n, wanted)
        actual = self._collect(self._index_docs(), n, wanted)
        pending = [
            i for i in sorted(expected.keys() | actual.keys()) if _differs(i, expected, actual)
        ]
        for _ in range(self.options.recheck_rounds):
            if not pending:
                break
            self.clock.sleep(self.options.recheck_wait)
            expected, actual = self._reread(pending, expected)
            pending = [i for i in pending if _differs(i, expected, actual)]
        for doc_id in pending:
            exp, act = expected.get(doc_id), actual.get(doc_id)
            kind = "missing" if act is None else "extra" if exp is None else "different"
            report.counts[kind] += 1
            if len(report.examples[kind]) < self.options.examples:
                report.examples[kind].append({"id": doc_id, "expected": exp, "actual": act})

    def _reread(
        self, ids: list[str], expected: dict[str, Doc]
    ) -> tuple[dict[str, Doc], dict[str, Doc]]:
        """Both sides of ``ids`` again: the index in real time, the table consistently."""
        actual = {}
        for doc_id, source in self.backend.get_sources(self.index, ids).items():
            doc = index_doc(source)
            if doc is not None:
                actual[doc_id] = doc
        fresh: dict[str, Doc] = {}
        for doc_id in ids:
            known = expected.get(doc_id) or actual.get(doc_id)
            key = self._key_from(known)
            if key is None:
                continue
            got = self.dynamodb.get_item(
                TableName=self.destination.name, Key=key, ConsistentRead=True
            ).get("Item")
            if got is not None and not is_tombstone(got):
                new_id, doc = self._doc_of(got)
                if doc is not None and new_id == doc_id:
                    fresh[doc_id] = doc
        return fresh, actual

    def _key_from(self, doc: Doc | None) -> dict[str, Any] | None:
        """The destination key of a document (its key attributes are in the document)."""
        if doc is None:
            return None
        key: dict[str, Any] = {}
        for name in self.destination.key_names:
            value = doc.get(name)
            kind = self.destination.key_types.get(name, "S")
            if value is None or kind == "B":
                return None
            key[name] = {kind: str(value)}
        return key


def _differs(doc_id: str, expected: dict[str, Doc], actual: dict[str, Doc]) -> bool:
    exp, act = expected.get(doc_id), actual.get(doc_id)
    if exp is None or act is None:
        return exp is not act
    return doc_hash(exp) != doc_hash(act)
