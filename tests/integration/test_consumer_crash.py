"""Consumer processes SIGKILLed at random points while the source changes and a backfill writes.

The consumers are real subprocesses (``python -m stream_consumer``) against moto's server. The
backfill is simulated with ``DestinationWriter.put_if_absent`` on a stale snapshot (as the bulk
copy would write it). Afterwards the destination must equal the transformed source exactly:
nothing missing, nothing resurrected, no orphans, and after finalisation no tombstones.
"""

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

import pytest

from livemigrate.aws import AwsClients
from livemigrate.config import Settings
from livemigrate.destination import Outcome
from livemigrate.items import key_id, to_plain, to_typed
from livemigrate.migration import Migration, open_migration
from livemigrate.transform import Transformer, load_transform
from livemigrate.versioning import user_attributes
from stream_consumer.kinesis.bridge import Chaos as BridgeChaos
from stream_consumer.kinesis.bridge import StreamBridge, create_stream
from tests.services import TEST_ENV, create_table, scan_all, settings_for, unique

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


def kinesis_settings(clients: AwsClients, source: str, dest: str) -> tuple[Settings, StreamBridge]:
    """A Kinesis change source fed from the source table's stream by the bridge, duplicating
    every third record and shuffling within windows of eight (issue 14)."""
    assert clients.kinesis is not None
    stream = unique("kin")
    create_stream(clients.kinesis, stream, shards=2)
    # The bridge is pumped before every catch-up below: a delivery margin of 0 is exact.
    settings = settings_for(
        source, dest, change_source="kinesis", kinesis_stream=stream, kinesis_delivery_margin=0
    )
    arn = clients.dynamodb.describe_table(TableName=source)["Table"]["LatestStreamArn"]
    chaos = BridgeChaos(duplicate_every=3, reorder_window=8, seed=14)
    return settings, StreamBridge(
        clients.streams, clients.kinesis, arn, stream, source, chaos=chaos
    )


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
        clean = user_attributes(plain)
        got[key_id({"pk": plain["pk"], "sk": plain["sk"]})] = clean
    return got, tombstones


def run_cli(env: dict[str, str], *extra: str) -> None:
    done = subprocess.run(
        consumer_cmd(*extra), env=env, cwd=ROOT, capture_output=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]


@pytest.mark.parametrize("change_source", ["dynamodb-streams", "kinesis"])
def test_killed_consumers_and_a_racing_backfill_converge_exactly(
    clients: AwsClients, tmp_path: Path, change_source: str
) -> None:
    seed = random.randrange(1_000_000)
    source, dest = unique("src"), unique("dst")
    create_table(clients.dynamodb, source)
    create_table(clients.dynamodb, dest, stream=None)
    settings, bridge = settings_for(source, dest), None
    if change_source == "kinesis":  # records out of order and more than once
        settings, bridge = kinesis_settings(clients, source, dest)
    chaos = Chaos(clients, open_migration(settings, clients), random.Random(seed), tmp_path)
    env = consumer_env(settings)
    snapshot = chaos.seed(120)  # what the backfill has read, before any change
    # GIVEN changes and a backfill racing each other while consumers are killed and restarted
    writer = threading.Thread(target=chaos.change_source, args=(160,))
    early = threading.Thread(target=chaos.backfill, args=(snapshot[: len(snapshot) * 2 // 3],))
    writer.start()
    early.start()
    stop_bridge = threading.Event()
    if bridge is not None:
        threading.Thread(target=bridge.run, args=(stop_bridge, 0.1), daemon=True).start()
    kills = chaos.kill_while(writer, env)
    writer.join()
    early.join()
    stop_bridge.set()
    pump = bridge.pump if bridge is not None else lambda: 0
    pump()
    # the rest of the snapshot arrives late, after a consumer has caught up (taking over the
    # dead ones' leases): every deleted item's put must lose to its tombstone
    run_cli(env, "--until-caught-up")
    early_count = len(chaos.outcomes)
    chaos.backfill(snapshot[len(snapshot) * 2 // 3 :])
    late = chaos.outcomes[early_count:]
    chaos.migration.store.put("PLAN", {"state": "complete", "completed_at": time.time()})
    # WHEN a consumer catches up after the backfill is complete, and tombstones are finalised
    pump()
    run_cli(env, "--until-caught-up")
    run_cli(env, "--finalize-tombstones", "--settle-seconds", "0.2")
    # THEN the destination equals the transformed source exactly
    got, tombstones = destination(clients, dest)
    want = transformed_source(clients, settings)
    context = f"seed={seed} kills={kills} logs={tmp_path}"
    assert tombstones == 0, context
    assert set(got) - set(want) == set(), f"orphans or resurrected items; {context}"
    assert set(want) - set(got) == set(), f"missing items; {context}"
    assert got == want, context
    assert kills >= 3, context
    late_deleted = [outcome for sk, outcome in late if sk in chaos.deleted]
    assert late_deleted, f"no late backfill put of a deleted item; {context}"
    assert set(late_deleted) == {Outcome.SUPERSEDED}, f"a deleted item came back; {context}"
    assert chaos.migration.dead_letters.count() == 0, context
    assert (chaos.migration.store.get("TOMBSTONES") or {}).get("state") == "purged"


def test_stalled_consumers_resuming_after_a_takeover_never_undo_a_real_delete(
    clients: AwsClients, tmp_path: Path
) -> None:
    seed = random.randrange(1_000_000)
    source, dest = unique("src"), unique("dst")
    create_table(clients.dynamodb, source)
    create_table(clients.dynamodb, dest, stream=None)
    settings = settings_for(source, dest)
    chaos = Chaos(clients, open_migration(settings, clients), random.Random(seed), tmp_path)
    env = consumer_env(settings)
    # GIVEN deletes are real (the backfill is complete) while the source changes
    chaos.migration.store.put("PLAN", {"state": "complete", "completed_at": time.time()})
    chaos.seed(80)
    writer = threading.Thread(target=chaos.change_source, args=(160,))
    writer.start()
    # WHEN consumers stall past their leases at random moments and then resume
    pauses = chaos.pause_while(writer, env)
    writer.join()
    run_cli(env, "--until-caught-up")
    # THEN nothing a stalled consumer wrote after its lease undid a newer change
    got, tombstones = destination(clients, dest)
    want = transformed_source(clients, settings)
    context = f"seed={seed} pauses={pauses} logs={tmp_path}"
    assert pauses >= 3, context
    assert tombstones == 0, context
    assert set(got) - set(want) == set(), f"orphans or resurrected items; {context}"
    assert got == want, context
    assert chaos.migration.dead_letters.count() == 0, context


def test_sigterm_checkpoints_and_releases_the_leases(clients: AwsClients, tmp_path: Path) -> None:
    source, dest = unique("src"), unique("dst")
    create_table(clients.dynamodb, source)
    create_table(clients.dynamodb, dest, stream=None)
    settings = settings_for(source, dest)
    migration = open_migration(settings, clients)
    for n in range(15):
        item = {"pk": f"user|{n}", "sk": "x", "createdAt": JAN + n}
        clients.dynamodb.put_item(TableName=source, Item=to_typed(item))
    with (tmp_path / "consumer.log").open("wb") as err:
        proc = subprocess.Popen(
            consumer_cmd("--lease-seconds", "60"), env=consumer_env(settings), cwd=ROOT, stderr=err
        )
    deadline = time.time() + 60
    shards: list[dict[str, Any]] = []
    while time.time() < deadline:
        shards = [s for _, s in migration.store.query("SHARD#source#")]
        if shards and shards[0].get("checkpoint") and shards[0].get("lease_owner"):
            break
        time.sleep(0.1)
    assert shards and shards[0].get("lease_owner"), (tmp_path / "consumer.log").read_text()
    # WHEN the process is asked to stop
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    # THEN the lease is free at once (no 60 s wait for a successor) and the work is kept
    (state,) = [s for _, s in migration.store.query("SHARD#source#")]
    assert "lease_owner" not in state
    assert int(state["records_applied"]) == 15
    assert len(list(scan_all(clients.dynamodb, dest))) == 15
