"""``livemigrate consume --engine kcl`` end to end: amazon-kclpy's MultiLangDaemon (Java 17)
against moto served over HTTP/2 by hypercorn, two workers, one SIGKILLed, its shards taken over.

GIVEN a Kinesis stream of 2 shards carrying a table's changes (the streaming destination's
record format) and two KCL workers sharing it, WHEN one worker is killed (SIGKILL: its daemon
dies with it, no lease is released) and more changes arrive, THEN the other worker takes the
shards over after the failover time and the destination equals the changes applied in order:
nothing lost, no delete undone. SIGTERM then stops the survivor with exit 0.

The workers run the KCL's 2.x-compatible lease mode (``clientVersionConfig``), where every
worker takes expired leases itself: a killed worker's shards move in seconds. In the default
3.x mode a leader assigns leases, and a killed leader is replaced only when its lock expires
(about two minutes), too long for CI.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from livemigrate.aws import client_config
from livemigrate.items import to_plain, to_typed
from livemigrate.versioning import TOMBSTONE_ATTR
from stream_consumer.kinesis.records import change_record
from tests.services import TEST_ENV, create_table, unique

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
LEASE_SECONDS = 5
FAST_KCL = (
    "--lease-seconds",
    str(LEASE_SECONDS),
    "--poll-interval",
    "0.25",
    "--kcl-property",
    "clientVersionConfig=CLIENT_VERSION_CONFIG_COMPATIBLE_WITH_2X",
)


def identity(item: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The test's transform: the destination item is the source item."""
    yield dict(item)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def http2_moto() -> Iterator[str]:
    """Our own moto behind hypercorn (HTTP/2), on a port of our own; stopped after."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "hypercorn", "tests.kcl_moto:app", "--bind", f"127.0.0.1:{port}"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own group: hypercorn's worker process is stopped with it
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: _answers(url), 30, "hypercorn moto did not start")
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)


def _answers(url: str) -> bool:
    with (
        contextlib.suppress(OSError),
        socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), 1),
    ):
        return True
    return False


def _wait(done: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {seconds:.0f}s")
        time.sleep(0.5)


class Changes:
    """Puts change records on the stream and keeps the state they should lead to."""

    def __init__(self, kinesis: Any, stream: str, table: str) -> None:
        self.kinesis, self.stream, self.table = kinesis, stream, table
        self.expected: dict[str, dict[str, Any]] = {}
        self.micros = int(time.time() * 1_000_000)

    def put(self, pk: str, value: int | None) -> None:
        self.micros += 1
        keys = {"pk": pk, "sk": "v"}
        old = self.expected.get(pk)
        typed_old = None if old is None else to_typed(old)
        if value is None:
            record = change_record(
                "REMOVE", to_typed(keys), None, typed_old, self.micros, table_name=self.table
            )
            self.expected.pop(pk, None)
        else:
            new = {**keys, "value": value}
            event = "MODIFY" if old else "INSERT"
            record = change_record(
                event, to_typed(keys), to_typed(new), typed_old, self.micros, table_name=self.table
            )
            self.expected[pk] = new
        data = json.dumps(record).encode()
        self.kinesis.put_record(StreamName=self.stream, Data=data, PartitionKey=pk)


def _live(dynamodb: Any, table: str) -> dict[str, dict[str, Any]]:
    items = dynamodb.scan(TableName=table, ConsistentRead=True)["Items"]
    live = {}
    for item in items:
        plain = to_plain(item)
        if TOMBSTONE_ATTR in plain:
            continue
        live[str(plain["pk"])] = {k: plain[k] for k in ("pk", "sk", "value")}
    return live


def _owners(dynamodb: Any, application: str) -> dict[str, str]:
    try:
        items = dynamodb.scan(TableName=application, ConsistentRead=True)["Items"]
    except dynamodb.exceptions.ResourceNotFoundException:
        return {}
    return {i["leaseKey"]["S"]: i.get("leaseOwner", {}).get("S", "") for i in items}


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def _worker(env: dict[str, str], name: str, log: Path) -> subprocess.Popen[bytes]:
    command = [str(Path(sys.executable).parent / "livemigrate"), "consume", "--engine", "kcl"]
    with log.open("wb") as out:
        return subprocess.Popen(
            [*command, "--worker-id", name, *FAST_KCL], env=env, cwd=ROOT, stderr=out, stdout=out
        )


def _phase(started: float, what: str) -> None:
    print(f"KCL test: {what} at {time.monotonic() - started:.0f}s", flush=True)


def test_kcl_workers_share_a_stream_and_take_over_a_killed_workers_shards(
    http2_moto: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    aws: dict[str, Any] = {
        "endpoint_url": http2_moto,
        "region_name": "us-east-1",
        "config": client_config(4),
    }
    dynamodb = boto3.client("dynamodb", **aws)
    kinesis = boto3.client("kinesis", **aws)
    source, dest, stream = unique("src"), unique("dst"), unique("kcl")
    create_table(dynamodb, source)
    create_table(dynamodb, dest, stream=None)
    kinesis.create_stream(StreamName=stream, ShardCount=2)
    migration = unique("mig")
    env = {
        **os.environ,
        **TEST_ENV,
        "AWS_ENDPOINT_URL": http2_moto,
        "PYTHONPATH": str(ROOT),
        "LIVEMIGRATE_MIGRATION_ID": migration,
        "LIVEMIGRATE_SOURCE_TABLE": source,
        "LIVEMIGRATE_DESTINATION_TABLE": dest,
        "LIVEMIGRATE_CONTROL_TABLE": unique("control"),
        "LIVEMIGRATE_TRANSFORM": "tests.integration.test_kcl_engine:identity",
        "LIVEMIGRATE_CHANGE_SOURCE": "kinesis",
        "LIVEMIGRATE_KINESIS_STREAM": stream,
        # Start-up over peak speed: the JVM start dominates this test's time.
        "JAVA_TOOL_OPTIONS": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
    }
    changes = Changes(kinesis, stream, source)
    for n in range(20):
        changes.put(f"item-{n}", n)
    application = f"livemigrate-kcl-{migration}"
    # Both workers start together (one JVM start-up to wait for, not two).
    a = _worker(env, "worker-a", tmp_path / "a.log")
    b = _worker(env, "worker-b", tmp_path / "b.log")
    try:
        _wait(lambda: _live(dynamodb, dest) == changes.expected, 150, "the first changes applied")
        _phase(started, "the first changes applied")
        _wait(
            lambda: set(_owners(dynamodb, application).values()) == {"worker-a", "worker-b"},
            90,
            "leases balanced",
        )
        _phase(started, "leases balanced over both workers")
        for pid in [*_children(a.pid), a.pid]:  # the daemon (Java) first: no lease released
            os.kill(pid, signal.SIGKILL)
        a.wait(10)
        for n in range(20):
            changes.put(f"item-{n}", None if n % 4 == 0 else n * 10)  # updates and deletes
        for n in range(20, 30):
            changes.put(f"item-{n}", n)
        _wait(lambda: set(_owners(dynamodb, application).values()) == {"worker-b"}, 60, "takeover")
        _phase(started, "worker a killed; worker b took its shard over")
        _wait(lambda: _live(dynamodb, dest) == changes.expected, 60, "worker b applied batch 2")
        _phase(started, "worker b applied the later changes")
        b.send_signal(signal.SIGTERM)
        assert b.wait(60) == 0  # SIGTERM passed through: the daemon shut down cleanly
    finally:
        for worker in (a, b):
            if worker.poll() is None:
                worker.kill()
                worker.wait(10)
    _phase(started, "worker b stopped by SIGTERM with exit 0")
