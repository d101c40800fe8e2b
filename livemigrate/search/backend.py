"""The search backend: the few index operations the sink, resync and cutover need.

``SearchBackend`` is the interface; ``ElasticsearchBackend`` implements it with
elasticsearch-py 8.x (the client is injected). An OpenSearch backend (opensearch-py) would
implement the same protocol: the sink only sees ``SearchBackend``.

Every write is conditional, through Elasticsearch's own optimistic concurrency control
(``if_seq_no`` + ``if_primary_term``, or ``op_type=create`` for a document that is absent):
see ``livemigrate.search.sink`` for why that, and not external versions or scripts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from elasticsearch import ApiError, Elasticsearch, NotFoundError, TransportError
from elasticsearch.helpers import scan as es_scan

from livemigrate.versioning import SEQ_ATTR, TOMBSTONE_ATTR

OpType = Literal["index", "create", "delete"]


@dataclass(frozen=True)
class Held:
    """What an index holds for one document id: its livemigrate version and ES's OCC token."""

    seq: str
    tombstone: bool
    seq_no: int
    primary_term: int


@dataclass(frozen=True)
class BulkAction:
    """One bulk operation; ``if_seq_no``/``if_primary_term`` make it conditional."""

    op: OpType
    index: str
    id: str
    source: Mapping[str, Any] | str | None = None  # str: the JSON text, already serialised
    if_seq_no: int | None = None
    if_primary_term: int | None = None

    def lines(self) -> list[str]:
        """The NDJSON lines of this operation (serialised once, here)."""
        meta: dict[str, Any] = {"_index": self.index, "_id": self.id}
        if self.if_seq_no is not None:
            meta["if_seq_no"] = self.if_seq_no
            meta["if_primary_term"] = self.if_primary_term
        head = json.dumps({self.op: meta}, separators=(",", ":"))
        if self.op == "delete":
            return [head]
        if isinstance(self.source, str):
            return [head, self.source]
        return [head, json.dumps(dict(self.source or {}), separators=(",", ":"))]


@dataclass(frozen=True)
class BulkResult:
    """Per-document outcome of a bulk request (HTTP status and, on failure, the error)."""

    status: int
    error_type: str | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.status < 300 or (self.status == 404 and self.error_type is None)


class SearchUnavailable(Exception):
    """The whole request failed for a reason that may pass (connection, 429, 5xx)."""


class DocumentStore(Protocol):
    """The two calls the sink needs: read versions, write conditionally."""

    def held(self, index: str, ids: Sequence[str]) -> dict[str, Held]: ...

    def bulk(self, actions: Sequence[BulkAction]) -> list[BulkResult]: ...


class SearchBackend(DocumentStore, Protocol):
    """Index operations, independent of the client library."""

    def create_index(
        self, name: str, settings: Mapping[str, Any], mappings: Mapping[str, Any]
    ) -> bool: ...

    def index_exists(self, name: str) -> bool: ...

    def list_indices(self, pattern: str) -> list[str]: ...

    def alias_indices(self, alias: str) -> list[str]: ...

    def swap_alias(self, alias: str, to_index: str) -> list[str]: ...

    def delete_index(self, name: str) -> bool: ...

    def refresh(self, name: str) -> None: ...

    def count(self, name: str) -> int: ...

    def scan(self, name: str) -> Iterator[tuple[str, dict[str, Any]]]: ...

    def delete_tombstones(self, name: str) -> int: ...


# Fields the sink adds to every document; mapped explicitly so a dynamic mapping can never
# turn them into text or a number.
RESERVED_MAPPINGS: dict[str, Any] = {
    SEQ_ATTR: {"type": "keyword"},
    TOMBSTONE_ATTR: {"type": "boolean"},
}


class ElasticsearchBackend:
    """``SearchBackend`` over elasticsearch-py 8.x.

    Parameters
    ----------
    client:
        An ``Elasticsearch`` client (injected).
    """

    def __init__(self, client: Elasticsearch) -> None:
        self.client = client

    def create_index(
        self, name: str, settings: Mapping[str, Any], mappings: Mapping[str, Any]
    ) -> bool:
        """Create ``name`` unless it exists; True if this call created it."""
        body_mappings = dict(mappings)
        body_mappings["properties"] = {**dict(mappings.get("properties", {})), **RESERVED_MAPPINGS}
        try:
            self._call(
                self.client.indices.create,
                index=name,
                settings=dict(settings),
                mappings=body_mappings,
            )
        except ApiError as exc:
            if exc.meta.status == 400 and _error_type(exc) == "resource_already_exists_exception":
                return False
            raise
        return True

    def index_exists(self, name: str) -> bool:
        return bool(self._call(self.client.indices.exists, index=name))

    def list_indices(self, pattern: str) -> list[str]:
        """Names of the indices matching a wildcard pattern (none is not an error)."""
        resp = self._call(self.client.indices.get, index=pattern, allow_no_indices=True)
        return sorted(resp.body)

    def held(self, index: str, ids: Sequence[str]) -> dict[str, Held]:
        """Version and OCC token of every id that exists (one real-time ``_mget``)."""
        if not ids:
            return {}
        resp = self._call(
            self.client.mget,
            index=index,
            ids=list(ids),
            source_includes=[SEQ_ATTR, TOMBSTONE_ATTR],
        )
        out: dict[str, Held] = {}
        for doc in resp["docs"]:
            if doc.get("found"):
                src = doc.get("_source", {})
                out[doc["_id"]] = Held(
                    seq=str(src.get(SEQ_ATTR, "")),
                    tombstone=bool(src.get(TOMBSTONE_ATTR, False)),
                    seq_no=int(doc["_seq_no"]),
                    primary_term=int(doc["_primary_term"]),
                )
        return out

    def bulk(self, actions: Sequence[BulkAction]) -> list[BulkResult]:
        """One ``_bulk`` request; one result per action, in order."""
        if not actions:
            return []
        body: list[str] = []
        for action in actions:
            body.extend(action.lines())
        resp = self._call(self.client.bulk, operations=body)
        results = []
        for entry in resp["items"]:
            ((_, detail),) = entry.items()
            error = detail.get("error")
            if isinstance(error, Mapping):
                results.append(
                    BulkResult(int(detail["status"]), str(error.get("type")), _reason(error))
                )
            else:
                results.append(BulkResult(int(detail["status"])))
        return results

    def alias_indices(self, alias: str) -> list[str]:
        try:
            resp = self._call(self.client.indices.get_alias, name=alias)
        except NotFoundError:
            return []
        return sorted(resp.body)

    def swap_alias(self, alias: str, to_index: str) -> list[str]:
        """Point ``alias`` at ``to_index`` only, in ONE atomic ``_aliases`` request.

        Returns the indices the alias was removed from (kept, not deleted). The remove actions
        name each current index explicitly, so readers see either the old or the new target,
        never both or none.
        """
        current = self.alias_indices(alias)
        actions: list[dict[str, Any]] = [
            {"remove": {"index": name, "alias": alias}} for name in current if name != to_index
        ]
        actions.append({"add": {"index": to_index, "alias": alias}})
        self._call(self.client.indices.update_aliases, actions=actions)
        return [name for name in current if name != to_index]

    def delete_index(self, name: str) -> bool:
        try:
            self._call(self.client.indices.delete, index=name)
        except NotFoundError:
            return False
        return True

    def refresh(self, name: str) -> None:
        self._call(self.client.indices.refresh, index=name)

    def count(self, name: str) -> int:
        self.refresh(name)
        return int(self._call(self.client.count, index=name)["count"])

    def scan(self, name: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every (id, source) of an index (scroll), after a refresh."""
        self.refresh(name)
        for hit in es_scan(self.client, index=name, query={"query": {"match_all": {}}}):
            yield str(hit["_id"]), dict(hit["_source"])

    def delete_tombstones(self, name: str) -> int:
        """Delete every tombstone document; one rewritten meanwhile is left alone.

        ``_delete_by_query`` lives in the reindex module, which the integ-test-zip node does not
        have, so: refresh, search the tombstones with their ``_seq_no``/``_primary_term``, and
        delete each conditionally (a document a newer live write replaced is a 409, skipped).
        """
        self.refresh(name)
        hits = es_scan(
            self.client,
            index=name,
            query={"query": {"term": {TOMBSTONE_ATTR: True}}, "seq_no_primary_term": True},
            _source=False,
        )
        deleted = 0
        batch: list[BulkAction] = []
        for hit in hits:
            batch.append(
                BulkAction(
                    "delete",
                    name,
                    str(hit["_id"]),
                    if_seq_no=int(hit["_seq_no"]),
                    if_primary_term=int(hit["_primary_term"]),
                )
            )
            if len(batch) >= 500:
                deleted += sum(1 for r in self.bulk(batch) if r.status == 200)
                batch = []
        deleted += sum(1 for r in self.bulk(batch) if r.status == 200)
        self.refresh(name)
        return deleted

    def _call(self, fn: Any, **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except ApiError as exc:
            if exc.meta.status == 429 or exc.meta.status >= 500:
                raise SearchUnavailable(f"{exc.meta.status} {_error_type(exc)}") from exc
            raise
        except TransportError as exc:
            raise SearchUnavailable(f"search node unreachable: {exc}") from exc


def _error_type(exc: ApiError) -> str:
    body = exc.body if isinstance(exc.body, Mapping) else {}
    error = body.get("error", {})
    return str(error.get("type", "")) if isinstance(error, Mapping) else str(error)


def _reason(error: Mapping[str, Any]) -> str:
    reason = f"{error.get('type')}: {error.get('reason')}"
    cause = error.get("caused_by")
    if isinstance(cause, Mapping):
        reason += f" (caused by {cause.get('type')}: {cause.get('reason')})"
    return reason
