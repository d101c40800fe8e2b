"""Resync and alias swap against each real engine, while writes and the live sink continue."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from livemigrate.aws import AwsClients
from livemigrate.control import ControlStore
from livemigrate.deadletters import DeadLetters
from livemigrate.search.backend import ClientBackend
from livemigrate.search.batcher import BatchPolicy
from livemigrate.search.indices import IndexConfig, live_index
from livemigrate.search.resync import Resync, TableSource, cleanup
from livemigrate.search.sink import Indexing, SearchSink
from livemigrate.search.targets import ControlTargets
from tests.services import StreamTail, unique
from tests.support.search import Writes, destination, index_state, table_state

CONFIG = IndexConfig({"number_of_replicas": 0}, {})


class SlowScan(TableSource):
    """A scan that waits between reading a page and handing it on, as a slow or preempted
    scanner would: live writes and deletes land in between, which the resync must not undo."""

    def items(self) -> Iterator[dict[str, Any]]:
        kwargs: dict[str, Any] = {"TableName": self.table, "Limit": self.page_size}
        while True:
            page = self.client.scan(**kwargs, ConsistentRead=True)
            time.sleep(0.4)
            yield from page.get("Items", [])
            if "LastEvaluatedKey" not in page:
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


class SinkThread(threading.Thread):
    """The live sink: tails D's stream and applies it until stopped and drained."""

    def __init__(self, tail: StreamTail, sink: SearchSink) -> None:
        super().__init__(daemon=True)
        self.tail, self.sink = tail, sink
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                records = self.tail.poll()
                self.sink.apply(records)
                if not records:
                    time.sleep(0.05)
            self.sink.apply(self.tail.drain())
        except BaseException as exc:  # surfaced by the test
            self.error = exc
            raise


def test_resync_during_concurrent_writes_ends_with_index_equal_to_table(
    clients: AwsClients, search_backend: ClientBackend, index_name: Callable[[], str]
) -> None:
    """GIVEN a live sink behind an alias and writers putting/deleting on D WHEN resync rebuilds
    the index from a scan of D meanwhile THEN the alias points at one new index equal to D,
    the old index is kept, and no tombstone document is left."""
    table, writer = destination(clients)
    alias, mid = index_name(), "M1"
    store = ControlStore(clients.dynamodb, unique("control"), mid)
    store.ensure_table()
    letters = DeadLetters(store)
    backend = search_backend
    old = live_index(alias, mid)
    backend.create_index(old, CONFIG.settings, CONFIG.mappings)
    backend.swap_alias(alias, old)
    targets = ControlTargets(store, old)
    writes = Writes(writer, keys=100, seed=3)
    writes.run(150, seed=99)  # history before the resync, partly deleted
    sink = SearchSink(backend, targets, letters, Indexing(policy=BatchPolicy(max_count=25)))
    live = SinkThread(StreamTail(clients, table), sink)
    live.start()
    threads = writes.threads(3, 10_000)  # until the resync is done
    time.sleep(0.3)
    resync = Resync(
        backend,
        targets,
        letters,
        Indexing(hook=sink.hook, policy=BatchPolicy(max_count=10)),
        alias=alias,
        migration_id=mid,
        config=CONFIG,
    )
    report = resync.run(SlowScan(clients.dynamodb, table, ("pk", "sk"), page_size=25))
    still_writing = any(t.is_alive() for t in threads)
    writes.stop.set()
    for t in threads:
        t.join()
    live.stop.set()
    live.join(timeout=60)
    assert live.error is None
    assert still_writing, "the resync must overlap the writes for this test to mean anything"
    assert backend.alias_indices(alias) == [report.index]
    assert report.previous == (old,)
    assert backend.index_exists(old)
    assert report.scanned > 0
    assert index_state(backend, alias) == table_state(clients, table)
    # the races this test is about happened: scan creates lost to live writes, and deletes
    # during the scan left tombstones that were purged
    assert report.superseded > 0
    assert report.tombstones_purged > 0
    assert letters.count() == 0
    assert cleanup(backend, alias, mid) == [old]
    assert not backend.index_exists(old)


def test_alias_swap_is_one_atomic_request_readers_always_see_exactly_one_index(
    search_backend: ClientBackend, index_name: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, backend = index_name(), search_backend
    a, b = f"{base}-a", f"{base}-b"
    for name in (a, b):
        backend.create_index(name, CONFIG.settings, {})
    backend.swap_alias(base, a)
    seen: list[list[str]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.append(backend.alias_indices(base))

    calls: list[str] = []
    real = backend._send

    def counting(method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(f"{method} {path}")
        return real(method, path, *args, **kwargs)

    monkeypatch.setattr(backend, "_send", counting)  # count the requests
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for i in range(10):
            assert backend.swap_alias(base, b if i % 2 == 0 else a) == [a if i % 2 == 0 else b]
    finally:
        stop.set()
        watcher.join()
    assert calls.count("POST /_aliases") == 10  # one _aliases request per swap
    assert seen
    assert all(len(names) == 1 for names in seen), [n for n in seen if len(n) != 1]
    assert backend.alias_indices(base) == [a]
