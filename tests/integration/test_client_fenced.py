"""The client library against moto: cache TTL on real reads, and a fenced cutover under load.

GIVEN writers that use ``ActiveTable.write`` and a consumer that copies the source into the
destination and heartbeats, WHEN ``cutover --fenced`` runs, THEN writers pause, resume against
the destination, the pause is measured, and no write lands in the source after it drained.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from livemigrate.aws import AwsClients
from livemigrate.client import ActiveTable
from livemigrate.clock import FakeClock
from livemigrate.cutover import Cutover, CutoverOptions
from livemigrate.flag import ControlFlagStore
from tests.services import create_table, scan_all, unique
from tests.support.cutover import Tables, ready_store


@pytest.fixture
def tables(clients: AwsClients) -> Iterator[Tables]:
    store = ready_store(clients)
    src, dst = unique("fsrc"), unique("fdst")
    for name in (src, dst):
        create_table(clients.dynamodb, name, stream=None)
    store.put("META", {"source_table": src, "destination_table": dst})
    yield Tables(store, src, dst)


def test_active_table_reads_the_store_at_most_once_per_ttl(tables: Tables) -> None:
    clock = FakeClock()
    flags = ControlFlagStore(tables.store)
    active = ActiveTable(flags, ttl=1.0, clock=clock)
    assert active.active_table() == tables.source
    flag = flags.read()
    flags.write(flag.flipped("destination", time.time()), flag.epoch)
    clock.advance(0.99)
    assert [active.active_table() for _ in range(20)] == [tables.source] * 20
    assert active.reads == 1
    clock.advance(0.01)
    assert active.active_table() == tables.destination
    assert active.reads == 2


@dataclass
class Copier:
    """A stand-in consumer: copies source items into the destination, then heartbeats.

    The heartbeat carries the time the copy pass STARTED, so "heartbeat after t" means every
    source write before t is in the destination. It stops copying once the flag has flipped,
    so a write that reached the source after the drain would stay missing from D.
    """

    clients: AwsClients
    t: Tables
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        flags = ControlFlagStore(self.t.store)
        while not self.stop.is_set() and flags.read().active == "source":
            started = time.time()
            for item in scan_all(self.clients.dynamodb, self.t.source):
                self.clients.dynamodb.put_item(TableName=self.t.destination, Item=item)
            self.t.store.update(
                "CONSUMER#source",
                {"heartbeat_at": started, "lag_seconds": 0, "records_behind": 0},
            )
            self.stop.wait(0.05)


@dataclass
class Writer:
    clients: AwsClients
    active: ActiveTable
    name: str
    stop: threading.Event
    log: list[tuple[str, float, float, str]] = field(default_factory=list)

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            key = f"{self.name}-{i:05d}"
            begun = time.time()

            def put(table: str, key: str = key) -> str:
                self.clients.dynamodb.put_item(
                    TableName=table, Item={"pk": {"S": key}, "sk": {"S": "v"}}
                )
                return table

            table = self.active.write(put)
            self.log.append((key, begun, time.time(), table))
            i += 1
            time.sleep(0.01)


def test_fenced_cutover_pauses_writers_and_loses_nothing(
    clients: AwsClients, tables: Tables
) -> None:
    stop = threading.Event()
    copier = Copier(clients, tables)
    writers = [
        Writer(
            clients,
            ActiveTable.from_control_table(
                clients.dynamodb, tables.store.table, tables.store.migration_id, ttl=0.2
            ),
            f"w{n}",
            stop,
        )
        for n in range(3)
    ]
    threads = [threading.Thread(target=w.run) for w in writers]
    threads.append(threading.Thread(target=copier.run))
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # writers are busy on the source
    lines: list[str] = []
    options = CutoverOptions(
        fenced=True,
        client_ttl=0.2,
        margin=0.1,
        consumer_margin=0.0,
        fence_seconds=20,
        drain_timeout=10,
        poll=0.05,
    )
    try:
        result = Cutover(
            tables.store, ControlFlagStore(tables.store), options, out=lines.append
        ).run()
        time.sleep(0.5)  # writers continue on the destination
    finally:
        stop.set()
        copier.stop.set()
        for thread in threads:
            thread.join()

    assert result.code == 0, lines
    assert result.flag is not None and result.flag.table == tables.destination
    assert result.write_pause is not None and 0.3 <= result.write_pause < 10
    assert any(line.startswith("write pause (fence to flip): ") for line in lines)
    flipped_at = result.flag.flipped_at
    log = [entry for w in writers for entry in w.log]
    # writers resumed against the new table: every write begun after the flip went to D
    after = [e for e in log if e[1] > flipped_at + 0.2 + 0.05]
    assert after and all(e[3] == tables.destination for e in after)
    before = [e for e in log if e[3] == tables.source]
    assert before  # and some went to the source before the fence
    # writers paused: none finished a write between the fence's effect and the flip
    fence_at = flipped_at - result.write_pause
    assert not [e for e in log if fence_at + 0.2 + 0.1 < e[2] < flipped_at]
    # nothing lost: every acknowledged write is in the destination
    in_dest = {i["pk"]["S"] for i in scan_all(clients.dynamodb, tables.destination)}
    assert {e[0] for e in log} <= in_dest
