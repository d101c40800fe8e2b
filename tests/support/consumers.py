"""Consumer processes and the source's chaos, for the crash, export-kill and outage tests."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from livemigrate.aws import AwsClients
from livemigrate.config import Settings
from livemigrate.destination import Outcome
from livemigrate.items import key_id, to_plain, to_typed
from livemigrate.migration import Migration
from livemigrate.transform import Transformer, load_transform
from tests.services import TEST_ENV, scan_all

JAN = 1704067200


MONTH = 2_678_400


ROOT = Path(__file__).resolve().parents[2]


def consumer_cmd(*extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "stream_consumer",
        "--lease-seconds",
        "2",
        "--poll-interval",
        "0.05",
        "--batch-size",
        "20",
        "--apply-threads",
        "4",
        *extra,
    ]


def consumer_env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        **TEST_ENV,
        "PYTHONPATH": str(ROOT),
        "LIVEMIGRATE_MIGRATION_ID": settings.migration_id,
        "LIVEMIGRATE_SOURCE_TABLE": settings.source_table,
        "LIVEMIGRATE_DESTINATION_TABLE": settings.destination_table,
        "LIVEMIGRATE_CONTROL_TABLE": settings.control_table,
        "LIVEMIGRATE_TRANSFORM": settings.transform,
        "LIVEMIGRATE_CHANGE_SOURCE": settings.change_source,
        **(
            {
                "LIVEMIGRATE_KINESIS_STREAM": settings.kinesis_stream,
                "LIVEMIGRATE_KINESIS_DELIVERY_MARGIN": str(settings.kinesis_delivery_margin),
            }
            if settings.kinesis_stream
            else {}
        ),
    }


def source_item(rng: random.Random, n: int) -> dict[str, Any]:
    outbox = n % 3 != 0
    return {
        "pk": "section-outbox|docket" if outbox else f"user|{n % 5}",
        "sk": f"i{n:05d}",
        "createdAt": Decimal(JAN + rng.randrange(3) * MONTH + n),
        "v": rng.randrange(1000),
    }


@dataclass
class Chaos:
    """The source's writers, the simulated backfill, and the consumer processes."""

    clients: AwsClients
    migration: Migration
    rng: random.Random
    logs: Path
    live: dict[str, dict[str, Any]] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)
    outcomes: list[tuple[str, Outcome]] = field(default_factory=list)
    spawned: int = 0

    @property
    def source(self) -> str:
        return self.migration.settings.source_table

    def seed(self, count: int) -> list[dict[str, Any]]:
        for n in range(count):
            it = source_item(self.rng, n)
            self.clients.dynamodb.put_item(TableName=self.source, Item=to_typed(it))
            self.live[it["sk"]] = it
        snapshot = [to_plain(i) for i in scan_all(self.clients.dynamodb, self.source)]
        self.rng.shuffle(snapshot)
        return snapshot

    def change_source(self, steps: int) -> None:
        """Deletes, updates (half of them move the item to another month) and inserts."""
        ddb = self.clients.dynamodb
        for step in range(steps):
            roll = self.rng.random()
            sk = self.rng.choice(sorted(self.live))
            if roll < 0.3 and len(self.live) > 20:
                old = self.live.pop(sk)
                ddb.delete_item(TableName=self.source, Key=to_typed({"pk": old["pk"], "sk": sk}))
                self.deleted.add(sk)
                continue
            if roll < 0.8:
                item = {**self.live[sk], "v": self.rng.randrange(1000)}
                if self.rng.random() < 0.5:
                    item["createdAt"] = Decimal(JAN + self.rng.randrange(3) * MONTH + step)
            else:
                item = source_item(self.rng, 1000 + step)
            ddb.put_item(TableName=self.source, Item=to_typed(item))
            self.live[item["sk"]] = item
            time.sleep(self.rng.uniform(0.0, 0.02))

    def backfill(self, items: list[dict[str, Any]]) -> None:
        for it in items:
            for out in self.migration.transformer.run(it):
                self.outcomes.append((it["sk"], self.migration.writer.put_if_absent(out)))
            time.sleep(self.rng.uniform(0.0, 0.03))

    def spawn(self, env: dict[str, str]) -> subprocess.Popen[bytes]:
        self.spawned += 1
        with (self.logs / f"consumer-{self.spawned}.log").open("wb") as err:
            return subprocess.Popen(consumer_cmd(), env=env, cwd=ROOT, stderr=err)

    def kill_while(self, alive: threading.Thread, env: dict[str, str]) -> int:
        """Two consumers; SIGKILL one at a random moment and restart it, until ``alive`` ends."""
        running = [self.spawn(env), self.spawn(env)]
        kills = 0
        while alive.is_alive():
            time.sleep(self.rng.uniform(0.2, 1.0))
            victim = self.rng.randrange(len(running))
            running[victim].send_signal(signal.SIGKILL)
            running[victim].wait()
            kills += 1
            running[victim] = self.spawn(env)
        for proc in running:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        return kills

    def pause_while(self, alive: threading.Thread, env: dict[str, str]) -> int:
        """Two consumers; stall one (SIGSTOP: a GC or VM pause, mid-apply or not) for longer
        than its 2 s lease, then let it go on (SIGCONT), until ``alive`` ends (3 times at
        least)."""
        running = [self.spawn(env), self.spawn(env)]
        pauses = 0
        while alive.is_alive() or pauses < 3:
            time.sleep(self.rng.uniform(0.2, 1.0))
            victim = running[self.rng.randrange(len(running))]
            victim.send_signal(signal.SIGSTOP)
            time.sleep(self.rng.uniform(2.5, 4.0))  # its shards are taken over meanwhile
            victim.send_signal(signal.SIGCONT)
            pauses += 1
        for proc in running:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        return pauses


def transformed_source(clients: AwsClients, settings: Settings) -> dict[str, dict[str, Any]]:
    """The expected destination, computed here with the transform, independently."""
    transformer = Transformer(
        load_transform(settings.transform), ("pk", "sk"), {"pk": "S", "sk": "S"}
    )
    want: dict[str, dict[str, Any]] = {}
    for raw in scan_all(clients.dynamodb, settings.source_table):
        for out in transformer.run(to_plain(raw)):
            plain = to_plain(out)
            want[key_id({"pk": plain["pk"], "sk": plain["sk"]})] = plain
    return want


def destination(clients: AwsClients, table: str) -> tuple[dict[str, dict[str, Any]], int]:
    got: dict[str, dict[str, Any]] = {}
    tombstones = 0
    for raw in scan_all(clients.dynamodb, table):
        plain = to_plain(raw)
        tombstones += bool(plain.get("_lm_tomb"))
        clean = {k: v for k, v in plain.items() if not k.startswith("_lm_")}
        got[key_id({"pk": plain["pk"], "sk": plain["sk"]})] = clean
    return got, tombstones
