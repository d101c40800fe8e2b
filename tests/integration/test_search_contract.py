"""One contract for the search backends: the in-memory one, Elasticsearch and OpenSearch.

The sink's correctness rests on a few behaviours of the document store (``held`` + ``bulk``
with optimistic concurrency); the unit tests assume them of ``tests.memory_backend``. Every
case below runs over the in-memory backend and over each real engine, so an assumption the
fake makes that an engine does not (or an engine that differs from the other) fails here.
The index operations (aliases, scan, tombstone purge) run over both engines.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import pytest

from livemigrate.search.backend import (
    BulkAction,
    BulkResult,
    ClientBackend,
    DocumentStore,
    Held,
    WrongEngine,
)
from livemigrate.search.clients import backend_for
from livemigrate.versioning import pad_seq
from tests.conftest import require_engine
from tests.memory_backend import MemoryBackend
from tests.services import ENGINE_URLS

STORES = ["memory", "elasticsearch", "opensearch"]


@pytest.fixture(scope="module", params=STORES)
def shared_index(request: pytest.FixtureRequest) -> Iterator[tuple[DocumentStore, str]]:
    """(a document store, an index in it) for the whole module: creating an index takes the
    engines a second or two, so the cases share one, each with documents of its own."""
    if request.param == "memory":
        yield MemoryBackend(), "idx"
        return
    require_engine(request.param)
    backend = backend_for(request.param, ENGINE_URLS[request.param], timeout=30)
    index = f"lmtest-{uuid.uuid4().hex[:10]}"
    backend.create_index(index, {"number_of_replicas": 0}, {})
    yield backend, index
    backend.delete_index(index)


class OwnIds:
    """A test's view of the shared index: its document ids carry a prefix of its own."""

    def __init__(self, backend: DocumentStore) -> None:
        self.backend = backend
        self.prefix = uuid.uuid4().hex[:8] + "-"

    def held(self, index: str, ids: Sequence[str]) -> dict[str, Held]:
        held = self.backend.held(index, [self.prefix + i for i in ids])
        return {doc_id.removeprefix(self.prefix): h for doc_id, h in held.items()}

    def bulk(self, actions: Sequence[BulkAction]) -> list[BulkResult]:
        return self.backend.bulk([replace(a, id=self.prefix + a.id) for a in actions])


@pytest.fixture
def store(shared_index: tuple[DocumentStore, str]) -> tuple[DocumentStore, str]:
    """(a document store, an index in it where no document of this test exists yet)."""
    backend, index = shared_index
    return OwnIds(backend), index


def doc(seq: int, **fields: object) -> dict[str, object]:
    return {"_lm_seq": pad_seq(str(seq)), **fields}


# -- the document store: what the sink relies on -----------------------------------------------
def test_create_writes_an_absent_document_and_held_reports_its_version(
    store: tuple[DocumentStore, str],
) -> None:
    backend, index = store
    (result,) = backend.bulk([BulkAction("create", index, "a", doc(5, v=1))])
    assert (result.status, result.ok) == (201, True)
    held = backend.held(index, ["a", "missing"])
    assert set(held) == {"a"}, "absent ids are left out"
    assert held["a"].seq == pad_seq("5")
    assert held["a"].tombstone is False
    assert isinstance(held["a"].seq_no, int) and isinstance(held["a"].primary_term, int)
    assert backend.held(index, []) == {}


def test_create_of_a_present_document_is_a_version_conflict(
    store: tuple[DocumentStore, str],
) -> None:
    backend, index = store
    backend.bulk([BulkAction("create", index, "a", doc(5))])
    (result,) = backend.bulk([BulkAction("create", index, "a", doc(6))])
    assert result.status == 409 and not result.ok
    assert result.error_type == "version_conflict_engine_exception"
    assert backend.held(index, ["a"])["a"].seq == pad_seq("5")


def test_a_conditional_index_succeeds_on_the_token_read_and_fails_on_an_old_one(
    store: tuple[DocumentStore, str],
) -> None:
    backend, index = store
    backend.bulk([BulkAction("create", index, "a", doc(5))])
    first = backend.held(index, ["a"])["a"]
    occ = {"if_seq_no": first.seq_no, "if_primary_term": first.primary_term}
    (ok,) = backend.bulk([BulkAction("index", index, "a", doc(6), **occ)])
    assert ok.status == 200
    second = backend.held(index, ["a"])["a"]
    assert second.seq == pad_seq("6") and second.seq_no != first.seq_no
    (stale,) = backend.bulk([BulkAction("index", index, "a", doc(7), **occ)])
    assert stale.status == 409 and stale.error_type == "version_conflict_engine_exception"
    assert backend.held(index, ["a"])["a"].seq == pad_seq("6")


def test_a_conditional_write_on_a_document_that_is_gone_is_a_conflict(
    store: tuple[DocumentStore, str],
) -> None:
    backend, index = store
    backend.bulk([BulkAction("create", index, "a", doc(5))])
    token = backend.held(index, ["a"])["a"]
    occ: dict[str, Any] = {"if_seq_no": token.seq_no, "if_primary_term": token.primary_term}
    (deleted,) = backend.bulk([BulkAction("delete", index, "a", **occ)])
    assert deleted.status == 200
    assert backend.held(index, ["a"]) == {}
    again = backend.bulk(
        [BulkAction("index", index, "a", doc(6), **occ), BulkAction("delete", index, "a", **occ)]
    )
    assert [r.status for r in again] == [409, 409]


def test_deleting_an_absent_document_is_a_harmless_404(store: tuple[DocumentStore, str]) -> None:
    backend, index = store
    (result,) = backend.bulk([BulkAction("delete", index, "nothing")])
    assert (result.status, result.ok) == (404, True)


def test_results_come_one_per_action_in_order_and_tombstones_are_held_as_such(
    store: tuple[DocumentStore, str],
) -> None:
    backend, index = store
    actions = [
        BulkAction("create", index, "a", doc(1)),
        BulkAction("create", index, "b", json.dumps({"_lm_seq": pad_seq("2"), "_lm_tomb": True})),
        BulkAction("create", index, "a", doc(3)),
        BulkAction("delete", index, "c"),
    ]
    assert [r.status for r in backend.bulk(actions)] == [201, 201, 409, 404]
    held = backend.held(index, ["a", "b"])
    assert (held["a"].tombstone, held["b"].tombstone) == (False, True)


def test_an_unconditional_index_creates_then_replaces(store: tuple[DocumentStore, str]) -> None:
    backend, index = store
    (created,) = backend.bulk([BulkAction("index", index, "a", doc(5, v=1))])
    first = backend.held(index, ["a"])["a"]
    (replaced,) = backend.bulk([BulkAction("index", index, "a", doc(4, v=2))])
    second = backend.held(index, ["a"])["a"]
    assert (created.status, replaced.status) == (201, 200)
    assert second.seq == pad_seq("4"), "an unconditional write does not compare versions"
    assert (second.seq_no, second.primary_term) != (first.seq_no, first.primary_term)


def test_a_delete_on_a_stale_token_is_refused_and_keeps_the_document(
    store: tuple[DocumentStore, str],
) -> None:
    backend, index = store
    backend.bulk([BulkAction("create", index, "a", doc(5))])
    old = backend.held(index, ["a"])["a"]
    backend.bulk([BulkAction("index", index, "a", doc(6))])
    occ: dict[str, Any] = {"if_seq_no": old.seq_no, "if_primary_term": old.primary_term}
    (stale,) = backend.bulk([BulkAction("delete", index, "a", **occ)])
    assert stale.status == 409 and stale.error_type == "version_conflict_engine_exception"
    assert backend.held(index, ["a"])["a"].seq == pad_seq("6")


def test_a_document_created_again_after_a_delete_does_not_match_the_old_token(
    store: tuple[DocumentStore, str],
) -> None:
    backend, index = store
    backend.bulk([BulkAction("create", index, "a", doc(5))])
    gone = backend.held(index, ["a"])["a"]
    backend.bulk([BulkAction("delete", index, "a")])
    (again,) = backend.bulk([BulkAction("create", index, "a", doc(7))])
    assert again.status == 201
    back = backend.held(index, ["a"])["a"]
    assert (back.seq_no, back.primary_term) != (gone.seq_no, gone.primary_term)
    occ: dict[str, Any] = {"if_seq_no": gone.seq_no, "if_primary_term": gone.primary_term}
    (stale,) = backend.bulk([BulkAction("index", index, "a", doc(8), **occ)])
    assert stale.status == 409
    assert backend.held(index, ["a"])["a"].seq == pad_seq("7")


def test_actions_on_one_id_in_one_request_apply_in_order(store: tuple[DocumentStore, str]) -> None:
    backend, index = store
    results = backend.bulk(
        [
            BulkAction("create", index, "a", doc(1)),
            BulkAction("index", index, "a", doc(2)),
            BulkAction("delete", index, "a"),
            BulkAction("create", index, "a", doc(3)),
        ]
    )
    assert [r.status for r in results] == [201, 200, 200, 201]
    assert backend.held(index, ["a"])["a"].seq == pad_seq("3")


def test_a_document_without_a_livemigrate_version_is_held_with_an_empty_one(
    store: tuple[DocumentStore, str],
) -> None:
    backend, index = store
    backend.bulk([BulkAction("create", index, "a", {"written": "by someone else"})])
    held = backend.held(index, ["a"])["a"]
    assert (held.seq, held.tombstone) == ("", False)


# -- index operations (the real engines) ---------------------------------------------------------
def test_index_lifecycle_and_the_alias_swap(
    search_backend: ClientBackend, index_name: Callable[[], str]
) -> None:
    backend, base = search_backend, index_name()
    old, new, alias = f"{base}-a", f"{base}-b", f"{base}-alias"
    assert backend.create_index(old, {"number_of_replicas": 0}, {}) is True
    assert backend.create_index(old, {"number_of_replicas": 0}, {}) is False
    backend.create_index(new, {"number_of_replicas": 0}, {})
    assert backend.index_exists(old) and not backend.index_exists(f"{base}-none")
    assert backend.list_indices(f"{base}-*") == [old, new]
    assert backend.list_indices(f"{base}-none-*") == []
    assert backend.alias_indices(alias) == []
    assert backend.swap_alias(alias, old) == []
    assert backend.swap_alias(alias, new) == [old]
    assert backend.alias_indices(alias) == [new]
    assert backend.delete_index(old) is True and backend.delete_index(old) is False


def test_scan_count_sources_and_the_tombstone_purge(
    search_backend: ClientBackend, index_name: Callable[[], str]
) -> None:
    backend, index = search_backend, index_name()
    backend.create_index(index, {"number_of_replicas": 0}, {})
    docs = [BulkAction("create", index, f"d{i}", doc(i, n=i)) for i in range(1100)]
    tomb = json.dumps({"_lm_seq": pad_seq("9"), "_lm_tomb": True})
    docs += [BulkAction("create", index, f"t{i}", tomb) for i in range(3)]
    assert all(r.ok for r in backend.bulk(docs))
    assert backend.count(index) == 1103
    scanned = dict(backend.scan(index))  # more than one scroll page
    assert len(scanned) == 1103 and scanned["d7"] == doc(7, n=7)
    assert backend.get_sources(index, ["d3", "nope"]) == {"d3": doc(3, n=3)}
    assert backend.delete_tombstones(index) == 3
    assert backend.count(index) == 1100


def test_a_node_of_the_other_engine_is_refused_naming_the_setting(search_engine: str) -> None:
    """GIVEN the node of one engine WHEN the backend of the other engine checks it THEN a
    WrongEngine (a ConfigError: exit 2, no traceback) names LIVEMIGRATE_SEARCH_ENGINE."""
    other = "opensearch" if search_engine == "elasticsearch" else "elasticsearch"
    backend = backend_for(other, ENGINE_URLS[search_engine], timeout=10)  # type: ignore[arg-type]
    with pytest.raises(WrongEngine) as caught:
        backend.check_engine()
    assert f"LIVEMIGRATE_SEARCH_ENGINE={search_engine}" in str(caught.value)
    backend_for(search_engine, ENGINE_URLS[search_engine]).check_engine()  # type: ignore[arg-type]
