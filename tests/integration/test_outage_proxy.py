"""A 30 s network outage mid-migration: the long-running processes ride it out (issue 10.11).

``livemigrate consume``, ``livemigrate search sync`` and ``livemigrate backfill`` run as real
processes whose AWS endpoint and search URL point at loss-injecting TCP proxies
(``tests.faultproxy``) in front of moto and Elasticsearch, while the test writes to the source
directly. Mid-migration both proxies black-hole every connection (held unanswered, reset after
a second) for 30 s. No process may exit; afterwards the destination equals the transformed
source and the index equals the destination, exactly.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from elasticsearch import Elasticsearch
from elasticsearch.helpers import scan

from livemigrate.aws import AwsClients
from livemigrate.config import Settings
from livemigrate.control import ControlStore
from livemigrate.items import to_typed
from livemigrate.search.indices import live_index
from tests.faultproxy import FaultProxy
from tests.services import ES_URL, MOTO_URL, TEST_ENV, create_table, unique
from tests.support.consumers import destination, transformed_source
from tests.support.search import table_state

ROOT = Path(__file__).resolve().parents[2]
JAN = 1704067200
MONTH = 2_678_400
OUTAGE = 30.0
SETTLE = 120.0  # the longest wait for parity after the outage (met in seconds when correct)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def port_of(url: str) -> int:
    port = urlparse(url).port
    assert port is not None, url
    return port


@pytest.fixture
def proxies() -> Iterator[tuple[FaultProxy, FaultProxy]]:
    aws, search = FaultProxy(port_of(MOTO_URL)), FaultProxy(port_of(ES_URL))
    yield aws, search
    aws.close()
    search.close()


@dataclass
class Migration:
    """The tables, the processes' environment, and the live writer on the source."""

    clients: AwsClients
    env: dict[str, str]
    logs: Path
    rng: random.Random = field(default_factory=lambda: random.Random(11))
    live: dict[str, dict[str, Any]] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return self.env["LIVEMIGRATE_SOURCE_TABLE"]

    @property
    def store(self) -> ControlStore:
        env = self.env
        table, mid = env["LIVEMIGRATE_CONTROL_TABLE"], env["LIVEMIGRATE_MIGRATION_ID"]
        return ControlStore(self.clients.dynamodb, table, mid)

    def seed(self, count: int) -> None:
        for n in range(count):
            self.put(self.item(n))

    def item(self, n: int) -> dict[str, Any]:
        pk = "section-outbox|docket" if n % 3 else f"user|{n % 5}"
        created = Decimal(JAN + self.rng.randrange(3) * MONTH + n)
        return {"pk": pk, "sk": f"i{n:05d}", "createdAt": created, "v": self.rng.randrange(99)}

    def put(self, item: dict[str, Any]) -> None:
        self.clients.dynamodb.put_item(TableName=self.source, Item=to_typed(item))
        self.live[item["sk"]] = item

    def write_live(self) -> None:
        """Puts, updates (some move the item to another month) and deletes, ~20/s."""
        n = 10_000
        while not self.stop.is_set():
            n += 1
            sk = self.rng.choice(sorted(self.live))
            roll = self.rng.random()
            if roll < 0.25 and len(self.live) > 50:
                old = self.live.pop(sk)
                key = to_typed({"pk": old["pk"], "sk": sk})
                self.clients.dynamodb.delete_item(TableName=self.source, Key=key)
            elif roll < 0.75:
                moved = Decimal(JAN + self.rng.randrange(3) * MONTH + n)
                self.put({**self.live[sk], "v": self.rng.randrange(99), "createdAt": moved})
            else:
                self.put(self.item(n))
            time.sleep(0.05)

    def start(self, name: str, *args: str) -> None:
        command = [sys.executable, "-m", "livemigrate.cli", *args]
        with (self.logs / f"{name}.log").open("wb") as err:
            self.procs[name] = subprocess.Popen(command, env=self.env, cwd=ROOT, stderr=err)

    def settings(self) -> Settings:
        env = self.env
        return Settings(
            migration_id=env["LIVEMIGRATE_MIGRATION_ID"],
            source_table=env["LIVEMIGRATE_SOURCE_TABLE"],
            destination_table=env["LIVEMIGRATE_DESTINATION_TABLE"],
            control_table=env["LIVEMIGRATE_CONTROL_TABLE"],
        )

    def consumer_started(self) -> bool:
        return self.store.exists() and self.store.get("CONSUMER#source") is not None

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def check_alive(self, *names: str) -> None:
        for name in names:
            code = self.procs[name].poll()
            assert code is None, f"{name} exited with {code}:\n{self.log(name)[-3000:]}"


def wait_until(what: str, timeout: float, condition: Callable[[], bool], watch: Any) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        watch()
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(0.5)


def make_migration(
    clients: AwsClients, proxies: tuple[FaultProxy, FaultProxy], tmp_path: Path
) -> Migration:
    source, dest = unique("src"), unique("dst")
    create_table(clients.dynamodb, source)
    create_table(clients.dynamodb, dest)  # with a stream: the search sink reads it
    aws, search = proxies
    env = {
        **os.environ,
        **TEST_ENV,
        "PYTHONPATH": str(ROOT),
        "AWS_ENDPOINT_URL": aws.url,
        "LIVEMIGRATE_SEARCH_URL": search.url,
        "LIVEMIGRATE_SEARCH_ALIAS": unique("lmoutage").lower(),
        "LIVEMIGRATE_MIGRATION_ID": unique("mig"),
        "LIVEMIGRATE_SOURCE_TABLE": source,
        "LIVEMIGRATE_DESTINATION_TABLE": dest,
        "LIVEMIGRATE_CONTROL_TABLE": unique("control"),
        "LIVEMIGRATE_READ_RATE": "15",  # keeps the backfill running into the outage
    }
    return Migration(clients, env, tmp_path)


def in_parity(m: Migration, es: Elasticsearch) -> bool:
    """Destination == transform(source), no tombstone left, index == destination."""
    dest = m.env["LIVEMIGRATE_DESTINATION_TABLE"]
    got, tombstones = destination(m.clients, dest)
    if tombstones or got != transformed_source(m.clients, m.settings()):
        return False
    index = live_index(m.env["LIVEMIGRATE_SEARCH_ALIAS"], m.env["LIVEMIGRATE_MIGRATION_ID"])
    if not es.indices.exists(index=index):
        return False
    return documents(es, index) == table_state(m.clients, dest)


def documents(es: Elasticsearch, index: str) -> dict[tuple[str, str], dict[str, Any]]:
    """The index's documents by (pk, sk), without the version; a tombstone never matches."""
    es.indices.refresh(index=index)
    out = {}
    for hit in scan(es, index=index, query={"query": {"match_all": {}}}):
        doc = {k: v for k, v in hit["_source"].items() if k != "_lm_seq"}
        out[(str(doc.get("pk")), str(doc.get("sk")))] = doc
    return out


def run_through_outage(
    m: Migration, proxies: tuple[FaultProxy, FaultProxy], es: Elasticsearch, backfill: bool
) -> None:
    long_running = ("consume", "search")
    m.seed(300)
    m.start("consume", "consume", "--lease-seconds", "6", "--poll-interval", "0.1",
            "--settle-seconds", "1")  # fmt: skip
    m.start("search", "search", "sync", "--lease-seconds", "6", "--poll-interval", "0.1")
    wait_until("the consumer to start", 60, m.consumer_started,
               lambda: m.check_alive(*long_running))  # fmt: skip
    watched: tuple[str, ...] = long_running
    if backfill:
        m.start("backfill", "backfill", "--workers", "2", "--page-size", "20")
        watched = (*long_running, "backfill")
        read = lambda: int(m.store.metrics().get("items_read", 0)) >= 40  # noqa: E731
        wait_until("the backfill to be under way", 60, read, lambda: m.check_alive(*watched))
    else:  # the backfill ran before the outage
        done = subprocess.run([sys.executable, "-m", "livemigrate.cli", "backfill"],
                              env={**m.env, "LIVEMIGRATE_READ_RATE": "0"}, cwd=ROOT,
                              capture_output=True, timeout=120, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr.decode()[-3000:]
    writer = threading.Thread(target=m.write_live, daemon=True)
    writer.start()
    time.sleep(2)
    # WHEN every connection to DynamoDB and Elasticsearch is black-holed for 30 s
    for proxy in proxies:
        proxy.blackhole(reset_after=1.0)
    end = time.monotonic() + OUTAGE
    while time.monotonic() < end:
        m.check_alive(*watched)  # THEN no process exits meanwhile
        time.sleep(0.5)
    for proxy in proxies:
        proxy.restore()
    time.sleep(3)
    m.stop.set()
    writer.join()
    if backfill:
        code = m.procs["backfill"].wait(timeout=SETTLE)
        assert code == 0, m.log("backfill")[-3000:]
    # THEN, with the endpoints back, everything converges exactly
    wait_until("parity", SETTLE, lambda: in_parity(m, es), lambda: m.check_alive(*long_running))
    m.check_alive(*long_running)
    assert "degraded" in m.log("consume")
    for name in long_running:
        m.procs[name].send_signal(signal.SIGTERM)
        assert m.procs[name].wait(timeout=60) == 0, m.log(name)[-3000:]
    assert (m.store.get("TOMBSTONES") or {}).get("state") == "purged"
    assert "degraded_since" not in (m.store.get("CONSUMER#source") or {})


@pytest.fixture
def es() -> Iterator[Elasticsearch]:
    client = Elasticsearch(ES_URL, request_timeout=30)
    yield client
    client.indices.delete(index="lmoutage*", ignore_unavailable=True, allow_no_indices=True)
    client.close()


def test_consumer_backfill_and_search_sink_ride_out_a_30s_outage(
    clients: AwsClients,
    proxies: tuple[FaultProxy, FaultProxy],
    es: Elasticsearch,
    tmp_path: Path,
) -> None:
    m = make_migration(clients, proxies, tmp_path)
    try:
        run_through_outage(m, proxies, es, backfill=True)
    finally:
        for proc in m.procs.values():
            proc.kill()
            proc.wait()
