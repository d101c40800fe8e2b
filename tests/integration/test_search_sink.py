"""The search sink against real services: D's stream on moto, the search nodes.

Expected state is computed independently of the sink's code: D is scanned with boto3 and
converted here; the index is read with the backend's scroll (checked by the contract suite).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from boto3.dynamodb.types import TypeDeserializer
from elasticsearch import Elasticsearch

from livemigrate.aws import AwsClients
from livemigrate.control import ControlStore
from livemigrate.deadletters import DeadLetters
from livemigrate.destination import DestinationWriter
from livemigrate.records import StreamRecord
from livemigrate.search.backend import ClientBackend, SearchBackend
from livemigrate.search.batcher import BatchPolicy
from livemigrate.search.clients import backend_for
from livemigrate.search.sink import Indexing, SearchSink
from livemigrate.search.targets import FixedTargets
from livemigrate.versioning import pad_seq, user_attributes
from tests.services import StreamTail, create_table, scan_all, unique

_deser = TypeDeserializer()


# -- helpers shared by the search integration tests ---------------------------------------------
def plain_json(value: Any) -> Any:
    """The test's own JSON-safe conversion (independent of livemigrate.search.documents)."""
    if isinstance(value, Decimal):
        return int(value) if value % 1 == 0 else float(value)
    if isinstance(value, dict):
        return {k: plain_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_json(v) for v in value]
    return value


def table_state(clients: AwsClients, table: str) -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for raw in scan_all(clients.dynamodb, table):
        item = {k: _deser.deserialize(v) for k, v in raw.items()}
        if item.get("_lm_tomb"):
            continue
        doc = {k: plain_json(v) for k, v in user_attributes(item).items()}
        out[(doc["pk"], doc["sk"])] = doc
    return out


def index_state(backend: SearchBackend, index: str) -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for doc_id, source in backend.scan(index):  # refreshes first
        src = {k: v for k, v in source.items() if k != "_lm_seq"}
        assert "_lm_tomb" not in src, f"tombstone document left in {index}: {doc_id}"
        # ids: percent-encoded key values joined by '~' (plain ASCII keys here).
        assert doc_id == f"{src['pk']}~{src['sk']}"
        out[(src["pk"], src["sk"])] = src
    return out


_CREATED: dict[int, list[str]] = {}  # client id -> index patterns to delete after the test


@pytest.fixture
def es(es_url: str) -> Iterator[Elasticsearch]:
    """An elasticsearch-py client (tests of other subjects that read the node directly)."""
    client = Elasticsearch(es_url, request_timeout=30)
    _CREATED[id(client)] = []
    yield client
    for pattern in _CREATED.pop(id(client)):
        client.indices.delete(index=pattern, ignore_unavailable=True, allow_no_indices=True)
    client.close()


def new_index(es: Elasticsearch, prefix: str = "lmtest") -> str:
    """A unique lowercase name; every index starting with it is deleted after the test."""
    name = unique(prefix).lower()
    _CREATED[id(es)].append(name + "*")
    return name


@pytest.fixture
def es_backend(es_url: str) -> ClientBackend:
    """Elasticsearch only: for the slow tests whose subject is the sink, not the engine (the
    contract suite and the tests taking ``search_backend`` cover OpenSearch)."""
    return backend_for("elasticsearch", es_url, timeout=30)


@pytest.fixture
def es_index(es_backend: ClientBackend) -> Iterator[str]:
    name = unique("lmtest").lower()
    yield name
    es_backend.delete_index(name + "*")


class Writes:
    """Concurrent puts and deletes into D through DestinationWriter, increasing sequences."""

    def __init__(self, writer: DestinationWriter, keys: int, seed: int) -> None:
        self.writer = writer
        self.keys = keys
        self.rng = random.Random(seed)
        self.seq = 10**22  # real sequence numbers are 21+ digits
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def next_seq(self) -> str:
        with self.lock:
            self.seq += self.rng.randint(1, 10**6)
            return pad_seq(str(self.seq))

    def one(self, rng: random.Random) -> None:
        key = {"pk": {"S": f"p{rng.randrange(self.keys)}"}, "sk": {"S": "s"}}
        if rng.random() < 0.3:
            self.writer.remove(key, self.next_seq(), tombstone=rng.random() < 0.5)
        else:
            item = {**key, "n": {"N": str(rng.randrange(1000))}, "tags": {"L": [{"S": "x"}]}}
            self.writer.put_if_newer(item, self.next_seq())

    def run(self, count: int, seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(count):
            if self.stop.is_set():
                return
            self.one(rng)

    def threads(self, n: int, count: int) -> list[threading.Thread]:
        out = [threading.Thread(target=self.run, args=(count, i)) for i in range(n)]
        for t in out:
            t.start()
        return out


def destination(clients: AwsClients) -> tuple[str, DestinationWriter]:
    table = unique("dest")
    create_table(clients.dynamodb, table)
    return table, DestinationWriter(clients.dynamodb, table, ("pk", "sk"), "m1")


def dead_letters(clients: AwsClients) -> DeadLetters:
    store = ControlStore(clients.dynamodb, unique("control"), "m1")
    store.ensure_table()
    return DeadLetters(store)


# -- tests --------------------------------------------------------------------------------------
def test_concurrent_writes_with_crashes_and_replays_end_with_index_equal_to_table(
    clients: AwsClients, es_backend: ClientBackend, es_index: str
) -> None:
    """GIVEN writers putting and deleting on D (with tombstones) WHEN the sink applies D's
    stream in small batches and 'crashes' at random points, replaying from an earlier
    position each time, THEN the index holds exactly D's items."""
    table, writer = destination(clients)
    index, backend = es_index, es_backend
    backend.create_index(index, {"number_of_replicas": 0}, {})
    tail = StreamTail(clients, table)
    writes = Writes(writer, keys=40, seed=7)
    threads = writes.threads(3, 150)
    rng = random.Random(11)
    seen: list[StreamRecord] = []
    sink = SearchSink(backend, FixedTargets(index), dead_letters(clients))
    while any(t.is_alive() for t in threads) or not seen:
        new = tail.poll()
        seen.extend(new)
        # a crash before the checkpoint: a fresh sink re-applies from an earlier position
        sink = SearchSink(
            backend,
            FixedTargets(index),
            sink.dead_letters,
            Indexing(policy=BatchPolicy(rng.randint(1, 50))),
        )
        start = max(0, len(seen) - len(new) - rng.randint(0, 60))
        sink.apply(seen[start:])
    for t in threads:
        t.join()
    seen.extend(tail.drain())
    sink.apply(seen[len(seen) // 2 :])  # a late replay of a suffix is harmless too
    expected = table_state(clients, table)
    assert expected, "the writers left items in D"
    assert index_state(backend, index) == expected


def test_a_document_violating_the_mapping_is_dead_lettered_and_the_rest_indexed(
    clients: AwsClients, search_backend: ClientBackend, index_name: Callable[[], str]
) -> None:
    table, writer = destination(clients)
    index, backend = index_name(), search_backend
    fields = {"pk": {"type": "keyword"}, "sk": {"type": "keyword"}, "n": {"type": "integer"}}
    mappings = {"dynamic": "strict", "properties": fields}
    backend.create_index(index, {"number_of_replicas": 0}, mappings)
    tail = StreamTail(clients, table)
    for i in range(5):
        n = {"S": "not-a-number"} if i == 2 else {"N": str(i)}
        writer.put_if_newer({"pk": {"S": f"p{i}"}, "sk": {"S": "s"}, "n": n}, pad_seq(str(100 + i)))
    letters = dead_letters(clients)
    sink = SearchSink(backend, FixedTargets(index), letters)
    sink.apply(tail.drain())
    held = index_state(backend, index)
    assert sorted(held) == [(f"p{i}", "s") for i in (0, 1, 3, 4)]
    (letter,) = list(letters.list())
    assert letter.origin == "search"
    # Elasticsearch says document_parsing_exception, OpenSearch mapper_parsing_exception
    assert "parsing_exception" in letter.reason
    assert "not-a-number" in letter.raw
    assert '"pk":"p2"' in letter.key
