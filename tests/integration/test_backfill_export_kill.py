"""Acceptance (issue 16): an export loaded while the source changes and loaders are SIGKILLed.

A stream consumer runs (real subprocesses) from before the export's ExportTime; the export is
a fixture in the real layout holding the source as it was at that time. While the source
changes (updates, moves to another month, deletes, inserts), a ``python -m backfill
--from-export`` process (8-15 s budgets, 10 s leases, 20 items/s) loads it; it is SIGKILLed
twice during the load (after 10 and 30 items read) and replaced whenever it ends, until the
plan is complete.
Then the destination must equal the transformed source exactly: stream records win over the
export, tombstones hold.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import pytest

from backfill import plan
from livemigrate.aws import AwsClients
from livemigrate.control import ControlStore
from livemigrate.migration import open_migration
from tests.export_layout import write_export
from tests.services import create_table, scan_all, settings_for, unique
from tests.support.consumers import (
    ROOT,
    Chaos,
    consumer_cmd,
    consumer_env,
    destination,
    transformed_source,
)

# A loaded machine (a shared moto, 2 cores) can take minutes; an idle one ~30 s.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

ITEMS = 60
KILL_AFTER = (10, 30)  # items read (all runs) before each SIGKILL: kills during the load
WRITE_RATE = 20  # items/s of each loader


def loader(env: dict[str, str], uri: str, rng: random.Random, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as err:
        return subprocess.Popen(
            [
                *(sys.executable, "-m", "backfill", "--from-export", uri, "--workers", "2"),
                *("--page-size", "10", "--lease-seconds", "10"),
                *("--budget-seconds", f"{rng.uniform(8.0, 15.0):.2f}"),
            ],
            cwd=ROOT,
            # Capped at 20 items/s: a load takes ~3 s, so both kills come during it (uncapped,
            # a loader could finish the 60 items in the moment before its first kill).
            env={**env, "LIVEMIGRATE_WRITE_RATE": str(WRITE_RATE)},
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def start_consumer(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """A running consumer (10 s leases: renewals stay in time on a loaded machine)."""
    with log.open("ab") as err:
        return subprocess.Popen(
            consumer_cmd("--lease-seconds", "10"), env=env, cwd=ROOT, stderr=err
        )


def catch_up(env: dict[str, str], *extra: str) -> None:
    """A consumer run to the end (10 s leases: renewals stay in time on a loaded machine)."""
    done = subprocess.run(
        consumer_cmd("--lease-seconds", "10", *extra),
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]


def load_with_kills(
    store: ControlStore, env: dict[str, str], uri: str, rng: random.Random, log: Path
) -> int:
    """Run loaders one after the other until the plan completes, SIGKILLing one each time the
    items read reach the next KILL_AFTER; returns the number of kills."""
    proc = loader(env, uri, rng, log)
    kills, deadline = 0, time.monotonic() + 420
    try:
        while plan.plan_state(store) != plan.COMPLETE:
            assert time.monotonic() < deadline, f"export backfill did not complete; {log}"
            read = int(store.metrics().get("items_read", 0))
            if kills < len(KILL_AFTER) and read >= KILL_AFTER[kills] and proc.poll() is None:
                time.sleep(rng.uniform(0.0, 0.5))  # at a random moment of the page in flight
                proc.send_signal(signal.SIGKILL)
                kills += 1
            if proc.poll() is not None:
                proc.wait()
                proc = loader(env, uri, rng, log)
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return kills


def test_export_loaded_under_live_writes_and_sigkills_equals_the_transformed_source(
    clients: AwsClients, tmp_path: Path
) -> None:
    seed = random.randrange(1_000_000)
    rng = random.Random(seed)
    source, dest = unique("src"), unique("dst")
    create_table(clients.dynamodb, source)
    create_table(clients.dynamodb, dest, stream=None)
    settings = settings_for(source, dest)
    chaos = Chaos(clients, open_migration(settings, clients), rng, tmp_path)
    env = consumer_env(settings)
    store = ControlStore(clients.dynamodb, settings.control_table, settings.migration_id)
    chaos.seed(ITEMS)
    # GIVEN a consumer running, then an export of the source taken after it started
    consumers = [start_consumer(env, tmp_path / "consumer.log")]
    while store.get("CONSUMER#source") is None:
        time.sleep(0.05)
    s3 = boto3.client("s3")
    bucket = unique("exports")
    s3.create_bucket(Bucket=bucket)
    snapshot = list(scan_all(clients.dynamodb, source))
    files = [snapshot[n::4] for n in range(4)]
    export = write_export(s3, bucket, files, time.time())
    # WHEN the source changes while loaders are killed and replaced until the plan completes
    writer = threading.Thread(target=chaos.change_source, args=(60,))
    writer.start()
    log = tmp_path / "loaders.log"
    try:
        kills = load_with_kills(store, env, export.uri, rng, log)
    finally:
        for consumer in consumers:
            consumer.send_signal(signal.SIGKILL)
            consumer.wait()
        writer.join()
    catch_up(env, "--until-caught-up")
    catch_up(env, "--finalize-tombstones", "--settle-seconds", "0.2")
    # THEN the destination equals the transformed source exactly, no tombstone left
    got, tombstones = destination(clients, dest)
    want = transformed_source(clients, settings)
    context = f"seed={seed} kills={kills} logs={tmp_path}"
    assert kills == len(KILL_AFTER), context
    assert tombstones == 0, context
    assert set(want) - set(got) == set(), f"missing items; {context}"
    assert set(got) - set(want) == set(), f"resurrected items or orphans; {context}"
    assert got == want, context
    assert chaos.migration.dead_letters.count() == 0, context
    assert int(store.metrics()["items_read"]) >= ITEMS
