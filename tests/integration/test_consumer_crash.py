"""Consumer processes SIGKILLed at random points while the source changes and a backfill writes.

The consumers are real subprocesses (``python -m stream_consumer``) against moto's server. The
backfill is simulated with ``DestinationWriter.put_if_absent`` on a stale snapshot (as the bulk
copy would write it). Afterwards the destination must equal the transformed source exactly:
nothing missing, nothing resurrected, no orphans, and after finalisation no tombstones.
"""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from livemigrate.aws import AwsClients
from livemigrate.config import Settings
from livemigrate.destination import Outcome
from livemigrate.items import to_typed
from livemigrate.migration import open_migration
from stream_consumer.kinesis.bridge import Chaos as BridgeChaos
from stream_consumer.kinesis.bridge import StreamBridge, create_stream
from tests.services import create_table, scan_all, settings_for, unique
from tests.support.consumers import (
    JAN,
    ROOT,
    Chaos,
    consumer_cmd,
    consumer_env,
    destination,
    transformed_source,
)


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
