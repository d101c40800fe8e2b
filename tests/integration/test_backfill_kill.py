"""Acceptance: worker processes SIGKILLed at random moments, and 1-2 s budgets, still copy exactly.

Three ``python -m backfill`` processes (two worker threads each, pages of 10 items, leases of
2 s, budgets drawn from 1-2 s) run side by side; the test kills one at a random moment again and
again and replaces every process that ended (killed or out of budget) until the plan is
complete. Then the destination must equal the transformed source, and the items read (the sum
of items returned by Scan/Query, counted in the control table) may exceed the table size only
by the pages in flight at the kills (at most 4 kills x 2 workers x 10 items): at most 2 %.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backfill import plan
from livemigrate.aws import AwsClients
from livemigrate.control import ControlStore
from tests.services import create_table, settings_for, unique
from tests.support.backfill import destination, expected, fill, outbox_items, settings_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
ITEMS = 2000  # with 4 SIGKILLs and 1-2 s budgets: ~200 s at 3000 on a quiet machine
PROCESSES = 3
KILLS = 4


def start(env: dict[str, str], rng: random.Random) -> subprocess.Popen[bytes]:
    budget = f"{rng.uniform(1.0, 2.0):.2f}"
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "backfill", "--without-consumer", "--workers", "2"),
            *("--page-size", "10", "--lease-seconds", "2", "--budget-seconds", budget),
            *("--total-segments", "8", "--hot-min-items", "100"),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_sigkilled_workers_and_tiny_budgets_still_copy_exactly(clients: AwsClients) -> None:
    rng = random.Random()
    source, dest = unique("src"), unique("dst")
    create_table(clients.dynamodb, source)
    create_table(clients.dynamodb, dest, stream=None)
    fill(clients.dynamodb, source, outbox_items(ITEMS, hot_share=0.2))
    settings = settings_for(source, dest)
    env = settings_env(settings)
    store = ControlStore(clients.dynamodb, settings.control_table, settings.migration_id)

    procs = [start(env, rng) for _ in range(PROCESSES)]
    kills, next_kill, deadline = 0, time.monotonic() + rng.uniform(1.5, 3.0), time.monotonic() + 240
    try:
        while not (store.exists() and plan.plan_state(store) == plan.COMPLETE):
            assert time.monotonic() < deadline, "backfill did not complete in time"
            if kills < KILLS and time.monotonic() >= next_kill:
                victim = rng.choice([p for p in procs if p.poll() is None] or procs)
                victim.send_signal(signal.SIGKILL)
                kills += 1
                next_kill = time.monotonic() + rng.uniform(0.8, 2.5)
            procs = [p if p.poll() is None else start(env, rng) for p in procs]
            time.sleep(0.1)
    finally:
        for p in procs:
            p.kill()
            p.wait()

    assert kills == KILLS
    assert destination(clients.dynamodb, dest) == expected(clients.dynamodb, source)
    read = int(store.metrics()["items_read"])
    ratio = read / ITEMS
    print(f"\nitems read / table size = {read}/{ITEMS} = {ratio:.4f} after {kills} SIGKILLs")
    assert ratio <= 1.02
