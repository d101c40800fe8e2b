"""End to end (issue 6): an application writes through a fenced cutover and a fenced rollback
and loses nothing.

GIVEN a source table with history and a hot outbox partition, the consumer, the search sink and
the reverse consumer running as processes, and an application that writes (puts, deletes)
through the client library the whole time; WHEN the backfill runs, verification passes,
``cutover --fenced`` flips the flag, the application writes the destination (the reverse
consumer is SIGKILLed and restarted meanwhile), ``rollback --fenced`` flips it back and the
application writes the source again; THEN after the cutover every acknowledged write is in the
destination with its latest value, nothing deleted is present and the search index holds exactly
the destination's items; after the rollback the source holds every acknowledged write (those made
to the destination included) and the destination follows it again; both write pauses were
reported.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from elasticsearch import Elasticsearch
from elasticsearch.helpers import scan

from livemigrate.aws import AwsClients
from livemigrate.client import ActiveTable
from livemigrate.control import ControlStore
from livemigrate.demo_data import create_source_table, demo_items, enable_stream, seed_table
from livemigrate.examples.hot_outbox import transform
from livemigrate.flag import ControlFlagStore
from livemigrate.items import to_plain, to_typed
from livemigrate.tables import create_like, describe
from livemigrate.versioning import user_attributes
from tests.services import TEST_ENV, scan_all, unique

Key = tuple[str, str]


@dataclass
class App:
    """The application: writes through ActiveTable, remembers every acknowledged outcome."""

    clients: AwsClients
    active: ActiveTable
    source: str
    keys: list[Key]
    created: dict[Key, Decimal]
    latest: dict[Key, dict[str, Any] | None] = field(default_factory=dict)
    tables_written: dict[str, int] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    pause: threading.Event = field(default_factory=threading.Event)
    paused: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        rng = random.Random(5)
        n = 0
        while not self.stop.is_set():
            if self.pause.is_set():  # the test looks at the tables: hold still
                self.paused.set()
                time.sleep(0.05)
                continue
            self.paused.clear()
            self.step(rng, n)
            n += 1
            time.sleep(0.02)

    def step(self, rng: random.Random, n: int) -> None:
        key = rng.choice(self.keys)
        deleting = rng.random() < 0.25
        # The creation date stays what it was: moves between month shards are the consumer
        # suite's subject; here every source key keeps one destination key.
        source_item = {
            "pk": key[0],
            "sk": key[1],
            "createdAt": self.created.get(key, Decimal(1_735_689_600)),
            "status": f"v{n}",
        }

        def build(table: str) -> list[dict[str, Any]]:
            item = source_item if table == self.source else next(iter(transform(source_item)))
            typed_key = {k: v for k, v in to_typed(item).items() if k in ("pk", "sk")}
            if deleting:
                return [{"Delete": {"Key": typed_key}}]
            return [{"Put": {"Item": to_typed(item)}}]

        # Checked writes: each lands only on the table the flag names when it lands.
        table = self.active.transact(build)
        self.latest[key] = None if deleting else source_item
        self.tables_written[table] = self.tables_written.get(table, 0) + 1


def cli(env: dict[str, str], *argv: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "livemigrate.cli", "--log-level", "WARNING", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def wait_until(what: str, check: Any, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def expected_destination(seeded: list[dict[str, Any]], app: App) -> dict[Key, dict[str, Any]]:
    latest: dict[Key, dict[str, Any] | None] = {(i["pk"], i["sk"]): i for i in seeded}
    latest.update(app.latest)
    out: dict[Key, dict[str, Any]] = {}
    for item in latest.values():
        if item is not None:
            for dest in transform(dict(item)):
                out[(dest["pk"], dest["sk"])] = dest
    return out


def destination_state(clients: AwsClients, table: str) -> dict[Key, dict[str, Any]]:
    state = {}
    for raw in scan_all(clients.dynamodb, table):
        item = user_attributes(to_plain(raw))
        state[(item["pk"], item["sk"])] = item
    return state


def expected_source(seeded: list[dict[str, Any]], app: App) -> dict[Key, dict[str, Any]]:
    latest: dict[Key, dict[str, Any] | None] = {(i["pk"], i["sk"]): i for i in seeded}
    latest.update(app.latest)
    return {key: dict(item) for key, item in latest.items() if item is not None}


def spawn(env: dict[str, str], *argv: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "livemigrate.cli", "--log-level", "WARNING", *argv], env=env
    )


def environment(source: str, dest: str, mid: str, control: str, alias: str) -> dict[str, str]:
    return {
        **os.environ,
        **TEST_ENV,
        "LIVEMIGRATE_MIGRATION_ID": mid,
        "LIVEMIGRATE_SOURCE_TABLE": source,
        "LIVEMIGRATE_DESTINATION_TABLE": dest,
        "LIVEMIGRATE_CONTROL_TABLE": control,
        "LIVEMIGRATE_SEARCH_ALIAS": alias,
        "LIVEMIGRATE_WORKERS": "2",
        "LIVEMIGRATE_INVERSE_TRANSFORM": "livemigrate.examples.hot_outbox:inverse",
    }


def backfill_verify_cut_over(env: dict[str, str], store: ControlStore) -> dict[str, Any]:
    """The migration as an operator runs it; the cutover's JSON summary."""
    backfill = cli(env, "backfill", "--workers", "2", "--page-size", "100")
    assert backfill.returncode == 0, backfill.stderr[-2000:]
    wait_until("tombstone purge", lambda: (store.get("TOMBSTONES") or {}).get("state") == "purged")
    verify = cli(env, "verify", "--json", "--no-search")
    assert verify.returncode == 0, verify.stdout[-3000:] + verify.stderr[-2000:]
    cutover = cli(env, "cutover", "--fenced", "--checked-writes", "--json")
    assert cutover.returncode == 0, cutover.stdout + cutover.stderr[-3000:]
    # --json: only the JSON result on stdout; the gate lines for people went to stderr
    assert "[ok]   reverse consumer (lossless rollback)\n" in cutover.stderr
    result: dict[str, Any] = json.loads(cutover.stdout)
    assert result["write_pause_seconds"] is not None and result["write_pause_seconds"] > 0
    return result


def wait_for_search(es_url: str, alias: str, expected: dict[Key, dict[str, Any]]) -> None:
    es = Elasticsearch(es_url, request_timeout=30)

    def indexed() -> dict[Key, str]:
        es.indices.refresh(index=alias)
        docs = scan(es, index=alias, query={"query": {"match_all": {}}})
        return {(d["_source"]["pk"], d["_source"]["sk"]): d["_source"]["status"] for d in docs}

    want = {k: str(v["status"]) for k, v in expected.items()}
    wait_until("search to match the destination", lambda: indexed() == want, timeout=60)


def roll_back_with_a_reverse_crash(
    env: dict[str, str], background: list[subprocess.Popen[bytes]], reverse_argv: list[str]
) -> None:
    """While the application writes the destination, SIGKILL and restart the reverse
    consumer (the last background process); then ``rollback --fenced``."""
    time.sleep(1.0)
    background[-1].send_signal(signal.SIGKILL)
    background[-1].wait(timeout=30)
    time.sleep(1.5)
    background[-1] = spawn(env, *reverse_argv)
    time.sleep(1.0)
    rollback = cli(env, "rollback", "--fenced", "--checked-writes", "--drain-timeout", "45")
    assert rollback.returncode == 0, rollback.stdout + rollback.stderr[-3000:]
    assert "write pause (fence to flip)" in rollback.stdout
    assert "flag flipped back" in rollback.stdout


def test_writes_through_a_fenced_cutover_and_rollback_are_never_lost(
    clients: AwsClients, es_url: str
) -> None:
    source, dest, mid = unique("e2e-src"), unique("e2e-dst"), unique("e2e")
    control, alias = unique("control"), unique("e2e-alias")
    env = environment(source, dest, mid, control, alias)
    seeded = list(demo_items(600, hot_share=0.5, seed=3))
    create_source_table(clients.dynamodb, source, stream=False)
    seed_table(clients.dynamodb, source, iter(seeded))
    enable_stream(clients.dynamodb, source)
    create_like(clients.dynamodb, describe(clients.dynamodb, source, "source"), dest)
    store = ControlStore(clients.dynamodb, control, mid)

    reverse_argv = ["reverse", "--lease-seconds", "4", "--poll-interval", "0.2"]
    background = [
        spawn(env, *argv)
        for argv in (
            ["consume", "--settle-seconds", "2", "--lease-seconds", "6"],
            ["search", "sync", "--lease-seconds", "6"],
            reverse_argv,
        )
    ]
    try:
        wait_until("consumer start", lambda: store.exists() and any(store.query("CONSUMER#")))
        app_keys = [(str(i["pk"]), str(i["sk"])) for i in seeded[::10]]
        app_keys += [("user|e2e", f"k{i:03d}") for i in range(40)]
        created = {(str(i["pk"]), str(i["sk"])): i["createdAt"] for i in seeded}
        flags = ActiveTable(ControlFlagStore(store, source, dest), ttl=0.5)
        app = App(clients, flags, source, app_keys, created)
        writer = threading.Thread(target=app.run, daemon=True)
        writer.start()

        backfill_verify_cut_over(env, store)
        time.sleep(2.0)  # the application keeps writing, now to the destination
        app.pause.set()
        app.paused.wait(timeout=30)
        assert app.tables_written.get(source, 0) > 0, "no write reached the source"
        assert app.tables_written.get(dest, 0) > 0, "no write followed the flip"
        expected = expected_destination(seeded, app)
        assert destination_state(clients, dest) == expected
        wait_for_search(es_url, alias, expected)

        written = dict(app.tables_written)
        app.pause.clear()
        roll_back_with_a_reverse_crash(env, background, reverse_argv)
        time.sleep(1.5)  # the application writes the source again
        app.stop.set()
        writer.join(timeout=30)
        assert app.tables_written[dest] > written[dest], "no write between cutover and rollback"
        assert app.tables_written[source] > written[source], "no write followed the rollback"
        # destination_state reads any pk/sk table: here the source, in the source's schema.
        assert destination_state(clients, source) == expected_source(seeded, app)
        wait_until(
            "the destination to follow the source again",
            lambda: destination_state(clients, dest) == expected_destination(seeded, app),
            timeout=60,
        )
    finally:
        for child in background:
            child.terminate()
        for child in background:
            child.wait(timeout=30)
