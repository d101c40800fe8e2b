"""The search sink against real services: D's stream on moto, the search nodes.

Expected state is computed independently of the sink's code: D is scanned with boto3 and
converted here; the index is read with the backend's scroll (checked by the contract suite).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from livemigrate.aws import AwsClients
from livemigrate.control import ControlStore
from livemigrate.deadletters import DeadLetters
from livemigrate.records import StreamRecord
from livemigrate.search.backend import ClientBackend
from livemigrate.search.batcher import BatchPolicy
from livemigrate.search.sink import Indexing, SearchSink
from livemigrate.search.targets import FixedTargets
from livemigrate.versioning import pad_seq
from tests.services import StreamTail, unique
from tests.support.search import Writes, destination, index_state, table_state


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
