"""The search tests' expected states (computed independently of the sink), writers, the CLI."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

from boto3.dynamodb.types import TypeDeserializer
from elasticsearch import Elasticsearch

from livemigrate.aws import AwsClients
from livemigrate.destination import DestinationWriter
from livemigrate.search.backend import SearchBackend
from livemigrate.versioning import pad_seq
from tests.services import ENGINE_URLS, TEST_ENV, create_table, scan_all, unique

_deser = TypeDeserializer()


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
        doc = {k: plain_json(v) for k, v in item.items() if not k.startswith("_lm_")}
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


def es_client(url: str) -> Iterator[Elasticsearch]:
    """An elasticsearch-py client; the indices ``new_index`` named for it are deleted after."""
    client = Elasticsearch(url, request_timeout=30)
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


ROOT = Path(__file__).resolve().parents[2]


def env_for(
    table: str, alias: str, mid: str, control: str, engine: str = "elasticsearch"
) -> dict[str, str]:
    return {
        **os.environ,
        **TEST_ENV,
        "LIVEMIGRATE_MIGRATION_ID": mid,
        "LIVEMIGRATE_SOURCE_TABLE": "unused-source",
        "LIVEMIGRATE_DESTINATION_TABLE": table,
        "LIVEMIGRATE_CONTROL_TABLE": control,
        "LIVEMIGRATE_SEARCH_URL": ENGINE_URLS[engine],
        "LIVEMIGRATE_SEARCH_ENGINE": engine,
        "LIVEMIGRATE_SEARCH_ALIAS": alias,
        "PYTHONPATH": str(ROOT),
    }


def cli(*args: str) -> list[str]:
    level = os.environ.get("LIVEMIGRATE_TEST_LOG_LEVEL", "WARNING")
    return [sys.executable, "-m", "livemigrate.cli", "--log-level", level, "search", *args]


def run_cli(args: list[str], env: dict[str, str], timeout: float = 60) -> Any:
    return subprocess.run(
        args, check=False, env=env, cwd=ROOT, capture_output=True, timeout=timeout
    )
