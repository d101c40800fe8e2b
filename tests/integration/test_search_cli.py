"""``livemigrate search`` as a process: SIGKILLed at random points, the index still ends equal."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from livemigrate.aws import AwsClients
from livemigrate.search.backend import ClientBackend
from livemigrate.search.indices import live_index
from tests.services import ENGINE_URLS, unique
from tests.support.search import (
    ROOT,
    Writes,
    cli,
    destination,
    env_for,
    index_state,
    run_cli,
    table_state,
)


def indexed(backend: ClientBackend, index: str) -> int:
    """Index operations so far (writes and deletes), 0 before the index exists."""
    if not backend.index_exists(index):
        return 0
    primaries = backend._send("GET", f"/{index}/_stats/indexing")["_all"]["primaries"]
    # A just-created index reports no primaries until its shard has started.
    stats = primaries.get("indexing", {"index_total": 0, "delete_total": 0})
    return int(stats["index_total"]) + int(stats["delete_total"])


def test_sync_killed_at_random_points_ends_with_index_equal_to_table(
    clients: AwsClients, es_backend: ClientBackend, es_index: str, tmp_path: Path
) -> None:
    """GIVEN writers putting and deleting on D WHEN `search sync` is SIGKILLed at random
    points and restarted (its shard lease is taken over) THEN after `sync --until-caught-up`
    the index holds exactly D's items."""
    table, writer = destination(clients)
    alias, mid, es = es_index, "K1", es_backend
    env = env_for(table, alias, mid, unique("control"))
    config = tmp_path / "index.json"
    config.write_text('{"settings": {"number_of_replicas": 0}}')
    sync = cli(
        "sync", "--lease-seconds", "2", "--poll-interval", "0.1", "--index-config", str(config)
    )
    writes = Writes(writer, keys=60, seed=5)
    threads = writes.threads(2, 10_000)
    rng = random.Random(21)
    index = live_index(alias, mid)
    try:
        for round_no in range(3):
            before = indexed(es, index)
            log = tmp_path / f"sync-{round_no}.log"
            with log.open("wb") as err:
                proc = subprocess.Popen(sync, env=env, cwd=ROOT, stderr=err)
                try:
                    deadline = time.monotonic() + 60
                    while indexed(es, index) <= before and time.monotonic() < deadline:
                        time.sleep(0.2)  # until this process is applying records...
                    time.sleep(rng.uniform(0.0, 1.5))  # ...then kill it at a random point
                    proc.send_signal(signal.SIGKILL)
                finally:
                    proc.kill()
                    proc.wait(timeout=30)
            assert proc.returncode == -signal.SIGKILL, log.read_text()[-2000:]
    finally:
        writes.stop.set()
        for t in threads:
            t.join()
    assert indexed(es, index) > 0, "the killed processes made progress (the final run resumes)"
    done = run_cli([*sync, "--until-caught-up"], env, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    expected = table_state(clients, table)
    assert len(expected) > 10
    assert index_state(es, index) == expected


def test_a_missing_alias_setting_is_a_clear_error(clients: AwsClients) -> None:
    env = env_for("some-table", "x", "K3", unique("control"))
    del env["LIVEMIGRATE_SEARCH_ALIAS"]
    out = run_cli(cli("sync"), env)
    assert out.returncode == 2
    assert "needs search_alias" in out.stderr.decode()
    assert "LIVEMIGRATE_SEARCH_ALIAS" in out.stderr.decode()


def test_sync_swap_resync_and_cleanup_through_the_cli(
    clients: AwsClients,
    search_engine: str,
    search_backend: ClientBackend,
    index_name: Callable[[], str],
    tmp_path: Path,
) -> None:
    """GIVEN D with items WHEN sync, swap-alias, resync and cleanup run as processes on the
    engine's node (LIVEMIGRATE_SEARCH_ENGINE) THEN each does its part and the alias ends on a
    rebuilt index equal to D."""
    table, writer = destination(clients)
    alias, mid, es = index_name(), "K4", search_backend
    env = env_for(table, alias, mid, unique("control"), search_engine)
    Writes(writer, keys=30, seed=8).run(60, seed=1)
    config = tmp_path / "index.json"
    config.write_text('{"settings": {"number_of_replicas": 0}}')
    opts = ["--index-config", str(config)]
    synced = run_cli(cli("sync", "--until-caught-up", "--lease-seconds", "2", *opts), env)
    assert synced.returncode == 0, synced.stderr.decode()[-3000:]
    swapped = run_cli(cli("swap-alias"), env)  # the search half of cutover
    assert swapped.returncode == 0, swapped.stderr.decode()
    assert f"-> {live_index(alias, mid)} (was: nothing)" in swapped.stdout.decode()
    assert es.alias_indices(alias) == [live_index(alias, mid)]
    resynced = run_cli(cli("resync", *opts), env)
    assert resynced.returncode == 0, resynced.stderr.decode()[-3000:]
    (now,) = es.alias_indices(alias)
    assert now.startswith(live_index(alias, mid) + "-r")
    assert f"previous index kept: {live_index(alias, mid)}" in resynced.stdout.decode()
    assert index_state(es, alias) == table_state(clients, table)
    cleaned = run_cli(cli("cleanup", "--json"), env)
    assert cleaned.returncode == 0, cleaned.stderr.decode()
    # --json: one JSON object on stdout, numbers as numbers (issue 12)
    assert json.loads(cleaned.stdout) == {
        "command": "cleanup",
        "code": 0,
        "deleted": [live_index(alias, mid)],
    }
    assert not es.index_exists(live_index(alias, mid))
    assert es.index_exists(now)


def test_a_node_of_the_other_engine_is_an_operator_error_naming_the_setting(
    clients: AwsClients, search_engine: str
) -> None:
    """GIVEN LIVEMIGRATE_SEARCH_ENGINE naming the other engine than the node at the URL WHEN a
    search command runs THEN it exits 2 (bad input) naming the setting, without a traceback."""
    other = "opensearch" if search_engine == "elasticsearch" else "elasticsearch"
    env = env_for("some-table", "x", "K5", unique("control"), other)
    env["LIVEMIGRATE_SEARCH_URL"] = ENGINE_URLS[search_engine]
    out = run_cli(cli("cleanup"), env)
    err = out.stderr.decode()
    assert out.returncode == 2, err
    assert f"LIVEMIGRATE_SEARCH_ENGINE={search_engine}" in err
    assert "Traceback" not in err
