"""The search backend: the few index operations the sink, resync, verify and cutover need.

``SearchBackend`` is the interface. ``ClientBackend`` implements it once, over the REST API
that Elasticsearch 8.x and OpenSearch 2.x share (``_bulk``, ``_mget``, ``_aliases``, scroll):
its two subclasses only send a request through their client library and translate its errors,
``ElasticsearchBackend`` with elasticsearch-py 8.x and ``OpenSearchBackend`` with opensearch-py
(both clients are injected; ``livemigrate.search.clients`` builds them from the settings).
The in-memory backend of the unit tests is checked against both by one contract suite
(tests/integration/test_search_contract.py).

Every write is conditional, through the engine's own optimistic concurrency control
(``if_seq_no`` + ``if_primary_term``, or ``op_type=create`` for a document that is absent):
see ``livemigrate.search.sink`` for why that, and not external versions or scripts.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from typing import TYPE_CHECKING, Any, Literal, Protocol
from urllib.parse import quote

from livemigrate.errors import ConfigError, SearchRequestError, SearchUnavailable
from livemigrate.versioning import SEQ_ATTR, TOMBSTONE_ATTR

if TYPE_CHECKING:
    from elasticsearch import Elasticsearch
    from opensearchpy import OpenSearch

Engine = Literal["elasticsearch", "opensearch"]

OpType = Literal["index", "create", "delete"]

# What the sink reads of a bulk answer: each item's status and error. The node leaves out the
# rest (index, id, version, shards, seq_no: most of the answer), so it writes and the client
# parses a fraction of the bytes.
BULK_FIELDS = "items.*.status,items.*.error"

# A str as a JSON string literal, exactly as json.dumps writes it (ASCII, escaped).
_json_str: Callable[[str], str] = encode_basestring_ascii


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
        """The NDJSON lines of this operation (serialised once, here).

        The action line is the text ``json.dumps`` would give, put together from JSON strings
        (every bulk request has one per document; a dict and an encoder each cost more).
        """
        head = f'{{"{self.op}":{{"_index":{_json_str(self.index)},"_id":{_json_str(self.id)}'
        if self.if_seq_no is not None:
            head += f',"if_seq_no":{int(self.if_seq_no)}'
            head += f',"if_primary_term":{int(self.if_primary_term or 0)}'
        head += "}}"
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


class WrongEngine(ConfigError):
    """The node is not the engine the ``search_engine`` setting names."""


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

    def get_sources(self, index: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]: ...

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


class ClientBackend:
    """``SearchBackend`` over the REST API Elasticsearch and OpenSearch share.

    Subclasses implement ``_send`` (one HTTP request through their client library, errors
    translated to ``SearchUnavailable`` / ``SearchRequestError`` / ``WrongEngine``) and
    ``check_engine``.
    """

    engine: Engine

    def _send(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        *,
        ndjson: bool = False,
    ) -> Any:
        raise NotImplementedError

    def check_engine(self) -> None:
        """Raise ``WrongEngine`` if the node is not ``self.engine``; ``SearchUnavailable``
        if it does not answer."""
        raise NotImplementedError

    def create_index(
        self, name: str, settings: Mapping[str, Any], mappings: Mapping[str, Any]
    ) -> bool:
        """Create ``name`` unless it exists; True if this call created it."""
        body_mappings = dict(mappings)
        body_mappings["properties"] = {**dict(mappings.get("properties", {})), **RESERVED_MAPPINGS}
        try:
            self._send(
                "PUT",
                f"/{_part(name)}",
                body={"settings": dict(settings), "mappings": body_mappings},
            )
        except SearchRequestError as exc:
            if exc.status == 400 and exc.error_type == "resource_already_exists_exception":
                return False
            raise
        return True

    def index_exists(self, name: str) -> bool:
        return bool(self._send("HEAD", f"/{_part(name)}"))

    def list_indices(self, pattern: str) -> list[str]:
        """Names of the indices matching a wildcard pattern (none is not an error)."""
        resp = self._send(
            "GET", f"/{_part(pattern)}", {"allow_no_indices": "true", "filter_path": "*.settings"}
        )
        return sorted(resp or {})

    def held(self, index: str, ids: Sequence[str]) -> dict[str, Held]:
        """Version and OCC token of every id that exists (one real-time ``_mget``)."""
        if not ids:
            return {}
        resp = self._send(
            "POST",
            f"/{_part(index)}/_mget",
            {"_source_includes": f"{SEQ_ATTR},{TOMBSTONE_ATTR}"},
            {"ids": list(ids)},
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

    def get_sources(self, index: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The source of every id that exists, read in real time."""
        if not ids:
            return {}
        resp = self._send(
            "POST", f"/{_part(index)}/_mget", {"realtime": "true"}, {"ids": list(ids)}
        )
        return {str(d["_id"]): dict(d["_source"]) for d in resp["docs"] if d.get("found")}

    def bulk(self, actions: Sequence[BulkAction]) -> list[BulkResult]:
        """One ``_bulk`` request; one result per action, in order."""
        if not actions:
            return []
        lines: list[str] = []
        for action in actions:
            lines.extend(action.lines())
        lines.append("")  # the body ends with a newline
        body = "\n".join(lines)
        resp = self._send("POST", "/_bulk", {"filter_path": BULK_FIELDS}, body, ndjson=True)
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
            resp = self._send("GET", f"/_alias/{_part(alias)}")
        except SearchRequestError as exc:
            if exc.status == 404:
                return []
            raise
        return sorted(resp)

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
        self._send("POST", "/_aliases", body={"actions": actions})
        return [name for name in current if name != to_index]

    def delete_index(self, name: str) -> bool:
        try:
            self._send("DELETE", f"/{_part(name)}")
        except SearchRequestError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def refresh(self, name: str) -> None:
        self._send("POST", f"/{_part(name)}/_refresh")

    def count(self, name: str) -> int:
        self.refresh(name)
        return int(self._send("GET", f"/{_part(name)}/_count")["count"])

    def scan(self, name: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every (id, source) of an index (scroll), after a refresh."""
        self.refresh(name)
        for hit in self._scroll(name, {"query": {"match_all": {}}}):
            yield str(hit["_id"]), dict(hit["_source"])

    def _scroll(self, name: str, body: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        """Every hit of a search, page by page (a scroll, cleared at the end)."""
        query = {"size": 1000, "sort": ["_doc"], **body}
        resp = self._send("POST", f"/{_part(name)}/_search", {"scroll": "2m"}, query)
        scroll_id = resp.get("_scroll_id")
        try:
            while resp["hits"]["hits"]:
                yield from resp["hits"]["hits"]
                resp = self._send(
                    "POST", "/_search/scroll", body={"scroll": "2m", "scroll_id": scroll_id}
                )
                scroll_id = resp.get("_scroll_id", scroll_id)
        finally:
            if scroll_id:
                self._clear_scroll(scroll_id)

    def _clear_scroll(self, scroll_id: str) -> None:
        # A scroll left behind expires by itself after 2 minutes.
        with contextlib.suppress(SearchRequestError, SearchUnavailable):
            self._send("DELETE", "/_search/scroll", body={"scroll_id": [scroll_id]})

    def delete_tombstones(self, name: str) -> int:
        """Delete every tombstone document; one rewritten meanwhile is left alone.

        ``_delete_by_query`` lives in the reindex module, which the integ-test-zip nodes do not
        have, so: refresh, search the tombstones with their ``_seq_no``/``_primary_term``, and
        delete each conditionally (a document a newer live write replaced is a 409, skipped).
        """
        self.refresh(name)
        hits = self._scroll(
            name,
            {
                "query": {"term": {TOMBSTONE_ATTR: True}},
                "seq_no_primary_term": True,
                "_source": False,
            },
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


class ElasticsearchBackend(ClientBackend):
    """``SearchBackend`` over elasticsearch-py 8.x.

    Parameters
    ----------
    client:
        An ``Elasticsearch`` client (injected).
    """

    engine: Engine = "elasticsearch"

    def __init__(self, client: Elasticsearch) -> None:
        self.client = client

    def check_engine(self) -> None:
        # elasticsearch-py itself refuses a node that does not say it is Elasticsearch.
        self._send("GET", "/_cluster/health")

    def _send(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        *,
        ndjson: bool = False,
    ) -> Any:
        from elasticsearch import ApiError, TransportError, UnsupportedProductError

        headers = {"accept": "application/json"}
        if body is not None:
            headers["content-type"] = "application/x-ndjson" if ndjson else "application/json"
        try:
            resp = self.client.perform_request(
                method, path, params=params, headers=headers, body=body
            )
        except UnsupportedProductError as exc:
            raise wrong_engine(self.engine, "the node does not say it is Elasticsearch") from exc
        except ApiError as exc:
            raise classify(exc.meta.status, exc.body, "Elasticsearch") from exc
        except TransportError as exc:
            raise SearchUnavailable(f"search node unreachable: {exc}", "Elasticsearch") from exc
        if method == "HEAD":
            return 200 <= resp.meta.status < 300
        return resp.body


class OpenSearchBackend(ClientBackend):
    """``SearchBackend`` over opensearch-py (OpenSearch 2.x, Amazon OpenSearch Service).

    Parameters
    ----------
    client:
        An ``OpenSearch`` client (injected; it may sign requests with SigV4).
    serverless:
        The node is Amazon OpenSearch Serverless (``aoss``), which has no ``GET /``: the
        engine check is skipped.
    """

    engine: Engine = "opensearch"

    def __init__(self, client: OpenSearch, *, serverless: bool = False) -> None:
        self.client = client
        self.serverless = serverless
        # opensearch-py logs every non-2xx answer as a warning; a 404 here is an answer (no
        # alias yet, no such index), never a problem worth an operator's attention.
        logging.getLogger("opensearch").addFilter(_quiet_404)

    def check_engine(self) -> None:
        if self.serverless:
            return
        try:
            info = self._send("GET", "/")
        except SearchRequestError as exc:  # Elasticsearch's integ-test-zip has no GET /
            raise wrong_engine(self.engine, f"GET / answered {exc}") from exc
        version = info.get("version", {}) if isinstance(info, Mapping) else {}
        if version.get("distribution") != "opensearch":
            name = "Elasticsearch" if "build_flavor" in version else "not OpenSearch"
            raise wrong_engine(self.engine, f"the node says it is {name}")

    def _send(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        *,
        ndjson: bool = False,
    ) -> Any:
        from opensearchpy import ConnectionError as OsConnectionError
        from opensearchpy import TransportError as OsTransportError

        headers = {"content-type": "application/x-ndjson"} if ndjson else None
        try:
            return self.client.transport.perform_request(
                method, path, params=params, body=body, headers=headers
            )
        except OsConnectionError as exc:
            raise SearchUnavailable(
                f"search node unreachable: {exc.info or exc}", "OpenSearch"
            ) from exc
        except OsTransportError as exc:
            status = exc.status_code if isinstance(exc.status_code, int) else 503
            raise classify(status, exc.info, "OpenSearch") from exc


def _quiet_404(record: logging.LogRecord) -> bool:
    return "[status:404 " not in record.getMessage()


def classify(
    status: int, body: Any, engine: str = "the search node"
) -> SearchUnavailable | SearchRequestError:
    """The exception for a refused request: transient (429, 5xx) or for good."""
    error = body.get("error", {}) if isinstance(body, Mapping) else {}
    error_type = str(error.get("type", "")) if isinstance(error, Mapping) else str(error)
    if status == 429 or status >= 500:
        return SearchUnavailable(f"{status} {error_type}", engine)
    reason = _reason(error) if isinstance(error, Mapping) else str(body)
    return SearchRequestError(status, error_type, reason)


def wrong_engine(engine: Engine, seen: str) -> WrongEngine:
    other = "opensearch" if engine == "elasticsearch" else "elasticsearch"
    return WrongEngine(
        f"the search node is not {'Elasticsearch' if engine == 'elasticsearch' else 'OpenSearch'}"
        f" ({seen}), but search_engine is {engine!r}",
        f"set LIVEMIGRATE_SEARCH_ENGINE={other} (search_engine in livemigrate.toml) if the node "
        "is that engine, or point LIVEMIGRATE_SEARCH_URL at the right node",
    )


def _part(name: str) -> str:
    """An index, alias or pattern as one URL path segment."""
    return quote(name, safe="*,")


def _reason(error: Mapping[str, Any]) -> str:
    reason = f"{error.get('type')}: {error.get('reason')}"
    cause = error.get("caused_by")
    if isinstance(cause, Mapping):
        reason += f" (caused by {cause.get('type')}: {cause.get('reason')})"
    return reason
