"""verify against each real search engine: destination vs index, and the cutover alias swap."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from livemigrate.aws import AwsClients
from livemigrate.cutover import Cutover, CutoverOptions, search_switch
from livemigrate.cutover_rollback import Rollback
from livemigrate.exitcodes import ExitCode
from livemigrate.flag import ControlFlagStore
from livemigrate.items import to_plain
from livemigrate.migration import Migration, open_migration
from livemigrate.search.backend import BulkAction, ClientBackend
from livemigrate.search.documents import default_document, document_id
from livemigrate.verify import verify
from livemigrate.versioning import SEQ_ATTR, TOMBSTONE_ATTR
from tests.services import create_table, settings_for, unique
from tests.support.cutover import Heartbeat, ready_store
from tests.support.verify import FAST, seed


@pytest.fixture
def backend(search_backend: ClientBackend) -> Iterator[ClientBackend]:
    """The engine's backend; the indices the test names ``lmv-*`` are deleted after."""
    yield search_backend
    search_backend.delete_index("lmv-*")


@pytest.fixture
def migration(
    clients: AwsClients, search_engine: str, search_url: str, backend: ClientBackend
) -> Iterator[Migration]:
    src, dst = unique("ssrc"), unique("sdst")
    create_table(clients.dynamodb, src)
    create_table(clients.dynamodb, dst)
    settings = settings_for(
        src,
        dst,
        search_url=search_url,
        search_engine=search_engine,
        search_alias=unique("lmv-orders"),
    )
    yield open_migration(settings, clients, require_source_stream=False)


def index_name(migration: Migration) -> str:
    return f"{migration.settings.search_alias}-{migration.id}"


def destination_docs(migration: Migration) -> dict[str, dict[str, Any]]:
    """What the search sink would have indexed for every destination item."""
    docs = {}
    for item in migration.clients.dynamodb.scan(TableName=migration.destination.name)["Items"]:
        key = {k: item[k] for k in migration.destination.key_names}
        docs[document_id(key)] = {**default_document(to_plain(item)), SEQ_ATTR: "0" * 40}
    return docs


def load_index(backend: ClientBackend, index: str, docs: dict[str, dict[str, Any]]) -> None:
    backend.create_index(index, {"number_of_shards": 1, "number_of_replicas": 0}, {})
    actions = [BulkAction("index", index, doc_id, doc) for doc_id, doc in docs.items()]
    assert all(r.ok for r in backend.bulk(actions))
    backend.refresh(index)


def test_index_in_parity_passes_and_differences_are_counted(
    migration: Migration, backend: ClientBackend
) -> None:
    seed(migration, n=12)
    docs = destination_docs(migration)
    index = index_name(migration)
    ids = sorted(docs)
    load_index(backend, index, docs)
    # a tombstone document is what a delete leaves during a resync: it counts as absent
    tomb = {"pk": "gone", "sk": "1", SEQ_ATTR: "9" * 40, TOMBSTONE_ATTR: True}
    load_index(backend, index, {"gone~1": tomb})
    parity = verify(migration, FAST)
    assert parity.search is not None
    assert parity.search["passed"] is True, parity.search
    assert parity.search["documents"] == parity.search["destination_items"] == 12
    assert parity.passed

    # GIVEN one document deleted, one changed, one that no destination item produces
    changes = [
        BulkAction("delete", index, ids[0]),
        BulkAction("index", index, ids[1], {**docs[ids[1]], "v": "stale"}),
        BulkAction("index", index, "orphan~1", {"pk": "orphan", "sk": "1"}),
    ]
    assert all(r.ok for r in backend.bulk(changes))
    backend.refresh(index)
    report = verify(migration, FAST)
    assert report.search is not None
    counts = {k: report.search[k] for k in ("missing", "extra", "different")}
    assert counts == {"missing": 1, "extra": 1, "different": 1}
    assert report.search["examples"]["different"][0]["actual"]["v"] == "stale"
    assert not report.passed  # the tables agree, the index does not
    assert report.counts == {"missing": 0, "extra": 0, "different": 0}
    held = migration.store.get("VERIFY") or {}
    assert held["passed"] is False and held["search_passed"] is False


def test_cutover_swaps_the_alias_atomically_and_rollback_swaps_it_back(
    clients: AwsClients, backend: ClientBackend, search_engine: str, search_url: str
) -> None:
    store = ready_store(clients)
    settings = settings_for(
        "orders",
        "orders_v2",
        migration_id=store.migration_id,
        control_table=store.table,
        search_url=search_url,
        search_engine=search_engine,
        search_alias=unique("lmv-app"),
    )
    switch = search_switch(settings, store)
    assert switch is not None
    old = unique("lmv-app-old")
    backend.create_index(old, {"number_of_shards": 1, "number_of_replicas": 0}, {})
    backend.swap_alias(switch.alias, old)
    options = CutoverOptions(
        client_ttl=0.1, margin=0.05, consumer_margin=0.0, drain_timeout=5, poll=0.05
    )
    flags = ControlFlagStore(store)
    lines: list[str] = []

    # GIVEN the new index does not exist: the search gate refuses
    refused = Cutover(store, flags, options, search=switch, out=lines.append).run()
    assert refused.code == ExitCode.GATES_UNMET
    assert any("does not exist" in line for line in lines)

    backend.create_index(switch.index, {"number_of_shards": 1, "number_of_replicas": 0}, {})
    with Heartbeat(store):
        result = Cutover(store, flags, options, search=switch, out=lines.append).run()
    assert result.code == 0
    assert result.search_previous == [old]
    assert backend.alias_indices(switch.alias) == [switch.index]
    assert (store.get("CUTOVER") or {})["search_previous"] == [old]

    assert Rollback(store, flags, search=switch, out=lines.append).run() == 0
    assert backend.alias_indices(switch.alias) == [old]
    assert flags.read().table == "orders"
