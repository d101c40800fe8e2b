"""End to end (issue 17): a Node.js writer and a Python writer through one fenced cutover.

GIVEN a migration whose cutover gates are met, a stand-in consumer copying the source into the
destination, a Python writer (``ActiveTable.put``) and a Node.js writer (the TypeScript client's
``put``, a separate process), both using checked writes; WHEN the real
``livemigrate cutover --fenced --checked-writes`` runs; THEN both writers wrote the source
before and the destination after, and every write either acknowledged is in the destination.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from livemigrate.aws import AwsClients
from livemigrate.client import ActiveTable, LostRace
from livemigrate.flag import ControlFlagStore
from tests.services import TEST_ENV, create_table, scan_all, unique
from tests.support.cutover import Tables, ready_store

PACKAGE = Path(__file__).resolve().parents[2] / "clients" / "typescript"


def _node_writer_script() -> Path:
    """The compiled Node.js writer (built here if needed); skip without Node.js unless CI."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not (node and npm):
        if os.environ.get("CI") == "true":
            pytest.fail("node and npm are required (CI=true): install Node.js 20+")
        pytest.skip("node/npm not installed: the TypeScript client cannot run")
    script = PACKAGE / "build" / "test" / "writer.js"
    sources = [*PACKAGE.glob("src/*.ts"), *PACKAGE.glob("test/*.ts")]
    built = script.exists() and script.stat().st_mtime > max(p.stat().st_mtime for p in sources)
    if not (PACKAGE / "node_modules").exists():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=PACKAGE, check=True)
    if not built:  # `make test` has built it already
        subprocess.run([npm, "run", "--silent", "build:test"], cwd=PACKAGE, check=True)
    return script


@pytest.fixture
def tables(clients: AwsClients) -> Iterator[Tables]:
    store = ready_store(clients)
    src, dst = unique("xsrc"), unique("xdst")
    for name in (src, dst):
        create_table(clients.dynamodb, name, stream=None)
    store.put("META", {"source_table": src, "destination_table": dst})
    yield Tables(store, src, dst)


@dataclass
class Copier:
    """A stand-in consumer: copies new source items into the destination, then heartbeats.

    The heartbeat carries the time the copy pass STARTED, so "heartbeat after t" means every
    source write before t is in the destination. Each key is written once by the writers, so
    each is copied once (a pass stays short however long the writers ran). It stops once the
    flag has flipped: a write that reached the source after the drain stays missing from D.
    """

    clients: AwsClients
    t: Tables
    stop: threading.Event = field(default_factory=threading.Event)
    copied: set[str] = field(default_factory=set)

    def run(self) -> None:
        flags = ControlFlagStore(self.t.store)
        while not self.stop.is_set() and flags.read().active == "source":
            started = time.time()
            for item in scan_all(self.clients.dynamodb, self.t.source):
                if item["pk"]["S"] not in self.copied:
                    self.clients.dynamodb.put_item(TableName=self.t.destination, Item=item)
                    self.copied.add(item["pk"]["S"])
            self.t.store.update(
                "CONSUMER#source",
                {"heartbeat_at": started, "lag_seconds": 0, "records_behind": 0},
            )
            self.stop.wait(0.05)


@dataclass
class PythonWriter:
    active: ActiveTable
    stop: threading.Event
    acks: list[tuple[str, str]] = field(default_factory=list)

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            key = f"py-{n:05d}"

            def item(_table: str, key: str = key) -> dict[str, Any]:
                return {"pk": {"S": key}, "sk": {"S": "v"}}

            try:
                table = self.active.put(item)
            except LostRace:
                continue  # nothing written, nothing acknowledged
            self.acks.append((key, table))
            n += 1
            time.sleep(0.01)


@dataclass
class NodeWriter:
    process: subprocess.Popen[str]
    acks: list[tuple[str, str]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def read(self, stdout: IO[str]) -> None:
        for line in stdout:
            record = json.loads(line)
            if record.get("done"):
                self.summary = record
            else:
                self.acks.append((record["key"], record["table"]))


def _environment(t: Tables) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEMIGRATE_")}
    return {
        **env,
        **TEST_ENV,
        "LIVEMIGRATE_CONFIG": str(PACKAGE / "no-such-livemigrate.toml"),
        "LIVEMIGRATE_MIGRATION_ID": t.store.migration_id,
        "LIVEMIGRATE_SOURCE_TABLE": t.source,
        "LIVEMIGRATE_DESTINATION_TABLE": t.destination,
        "LIVEMIGRATE_CONTROL_TABLE": t.store.table,
        "LM_CONTROL_TABLE": t.store.table,
        "LM_MIGRATION_ID": t.store.migration_id,
        "LM_PREFIX": "node",
        "LM_TTL": "0.2",
    }


def _wait_for(what: str, check: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _cutover(env: dict[str, str]) -> dict[str, Any]:
    argv = ["cutover", "--fenced", "--checked-writes", "--json", "--client-ttl", "0.2"]
    argv += ["--consumer-margin", "0.3", "--fence-seconds", "40", "--drain-timeout", "30"]
    done = subprocess.run(
        [sys.executable, "-m", "livemigrate.cli", "--log-level", "WARNING", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.mark.slow
@pytest.mark.integration
def test_node_and_python_writers_lose_nothing_through_a_fenced_cutover(
    clients: AwsClients, tables: Tables
) -> None:
    script = _node_writer_script()
    env = _environment(tables)
    stop = threading.Event()
    copier = Copier(clients, tables)
    active = ActiveTable.from_control_table(
        clients.dynamodb, tables.store.table, tables.store.migration_id, ttl=0.2
    )
    python = PythonWriter(active, stop)
    process = subprocess.Popen(["node", str(script)], env=env, stdout=subprocess.PIPE, text=True)
    node = NodeWriter(process)
    assert process.stdout is not None
    threads = [
        threading.Thread(target=python.run),
        threading.Thread(target=copier.run),
        threading.Thread(target=node.read, args=(process.stdout,)),
    ]
    for thread in threads:
        thread.start()
    try:
        _wait_for("both writers to write the source", lambda: node.acks and python.acks)
        result = _cutover(env)
        started = (len(node.acks), len(python.acks))
        _wait_for(
            "both writers to write after the flip",
            lambda: len(node.acks) > started[0] + 5 and len(python.acks) > started[1] + 5,
        )
    finally:
        stop.set()
        copier.stop.set()
        process.terminate()
        process.wait(timeout=30)
        for thread in threads:
            thread.join(timeout=30)
        process.stdout.close()

    assert process.returncode == 0 and node.summary.get("done"), node.summary
    pause = result["write_pause_seconds"]
    assert pause is not None and 0 < pause < 30
    print(f"write pause (fence to flip): {pause:.3f}s")
    for acks in (node.acks, python.acks):
        assert {table for _, table in acks} == {tables.source, tables.destination}
        assert acks[-1][1] == tables.destination
    in_destination = {i["pk"]["S"] for i in scan_all(clients.dynamodb, tables.destination)}
    acknowledged = {key for key, _ in node.acks + python.acks}
    assert acknowledged - in_destination == set()
