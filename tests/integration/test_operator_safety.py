"""Safety of the operator's commands (issue 12, "Safety first"), run as a user would.

- ``search resync`` leaves the application's alias alone before the cutover;
- Ctrl-C / SIGTERM / an error during ``cutover --fenced`` or ``rollback --fenced`` lifts the
  fence, says where the flag is, and exits with the documented code;
- an aborted cutover acknowledges no dead letter and records no cutover.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from elasticsearch import Elasticsearch

from livemigrate.aws import AwsClients
from livemigrate.clock import SystemClock
from livemigrate.control import ControlStore
from livemigrate.cutover import Cutover, CutoverOptions
from livemigrate.deadletters import DeadLetters
from livemigrate.exitcodes import ExitCode
from livemigrate.flag import ControlFlagStore
from livemigrate.gates import Policy
from livemigrate.keys import CUTOVER as CUTOVER_ITEM
from livemigrate.search.backend import ElasticsearchBackend
from livemigrate.search.indices import live_index
from livemigrate.search.targets import ControlTargets
from tests.services import TEST_ENV
from tests.support.cutover import ready_store
from tests.support.search import Writes, destination, env_for, new_index, run_cli
from tests.support.search import cli as search_cli

ROOT = Path(__file__).resolve().parents[2]


# -- search resync and the application's alias ---------------------------------------------------
def test_resync_before_the_cutover_leaves_the_applications_alias_where_it_is(
    clients: AwsClients, es: Elasticsearch
) -> None:
    """GIVEN the application's alias on its own (old-schema) index and no cutover yet
    WHEN `search resync` runs THEN the alias still points at the old index, the rebuilt index
    is the sink's live index (the cutover moves the alias to it), and only
    --move-alias-before-cutover moves the alias."""
    table, writer = destination(clients)
    Writes(writer, keys=10, seed=2).run(20, seed=3)
    alias, mid = new_index(es, "lmsafe"), "S1"
    app_index = f"{alias}-app-v1"
    backend = ElasticsearchBackend(es)
    backend.create_index(app_index, {"number_of_replicas": 0}, {})
    backend.swap_alias(alias, app_index)
    control = f"control-{mid}-{alias}"
    env = env_for(table, alias, mid, control)

    out = run_cli(search_cli("resync"), env)

    assert out.returncode == ExitCode.OK, out.stderr.decode()[-2000:]
    assert list(es.indices.get_alias(name=alias).body) == [app_index]
    assert "the cutover has not happened" in out.stdout.decode()
    store = ControlStore(clients.dynamodb, control, mid)
    (rebuilt,) = ControlTargets(store, live_index(alias, mid)).current().indices
    assert rebuilt.startswith(live_index(alias, mid) + "-r")

    time.sleep(1.0)  # a resync index is named by the second it starts
    forced = run_cli(search_cli("resync", "--move-alias-before-cutover"), env)

    assert forced.returncode == ExitCode.OK, forced.stderr.decode()[-2000:]
    (now,) = es.indices.get_alias(name=alias).body
    assert now.startswith(live_index(alias, mid) + "-r") and now != rebuilt


# -- interrupting a fenced cutover ----------------------------------------------------------------
def _env(store: ControlStore) -> dict[str, str]:
    env = {
        **os.environ,
        **TEST_ENV,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": str(ROOT),
        "LIVEMIGRATE_MIGRATION_ID": store.migration_id,
        "LIVEMIGRATE_SOURCE_TABLE": "orders",
        "LIVEMIGRATE_DESTINATION_TABLE": "orders_v2",
        "LIVEMIGRATE_CONTROL_TABLE": store.table,
    }
    env.pop("LIVEMIGRATE_SEARCH_URL", None)
    return env


def _interrupted(store: ControlStore, signum: int, *args: str) -> tuple[int, str]:
    """Run a fenced command, send ``signum`` once writers are fenced; (exit code, output)."""
    command = [sys.executable, "-m", "livemigrate.cli", *args, "--drain-timeout", "50"]
    proc = subprocess.Popen(
        command,
        env=_env(store),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "writers fenced" in line:
            time.sleep(0.3)  # inside the drain wait
            proc.send_signal(signum)
            break
    rest, _ = proc.communicate(timeout=30)
    return proc.returncode, "".join(seen) + rest


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_a_fenced_cutover_lifts_the_fence_and_says_where_the_flag_is(
    clients: AwsClients, signum: int
) -> None:
    """GIVEN every gate met and a consumer that never drains WHEN the fenced cutover gets
    Ctrl-C (or SIGTERM) while it waits THEN the fence is lifted, the output says the flag's
    state, the exit code is INTERRUPTED, and nothing was flipped or recorded."""
    store = ready_store(clients)
    DeadLetters(store).add("stream", "boom", {"pk": "a"}, {"pk": "a"})

    code, out = _interrupted(store, signum, "cutover", "--fenced", "--ack-dead-letters")

    assert code == ExitCode.INTERRUPTED, out
    assert "the fence was lifted" in out
    assert "flag: active=source table=orders epoch=2, not fenced" in out
    assert "Traceback" not in out
    flag = ControlFlagStore(store).read()
    assert (flag.active, flag.fenced) == ("source", False)
    assert DeadLetters(store).unacknowledged() == 1
    assert store.get(CUTOVER_ITEM) is None


def test_a_signal_during_a_fenced_rollback_lifts_the_fence(clients: AwsClients) -> None:
    """GIVEN a cut-over migration with a reverse consumer that never drains WHEN the fenced
    rollback is interrupted THEN the fence is lifted and the destination stays active."""
    store = ready_store(clients)
    flags = ControlFlagStore(store)
    flags.write(flags.read().flipped("destination", time.time()), 0)
    store.put("CONSUMER#reverse", {"heartbeat_at": time.time(), "lag_seconds": 0})
    inverse = "livemigrate.examples.hot_outbox:inverse"

    code, out = _interrupted(
        store, signal.SIGINT, "rollback", "--fenced", "--inverse-transform", inverse
    )

    assert code == ExitCode.INTERRUPTED, out
    assert "the fence was lifted" in out
    flag = flags.read()
    assert (flag.active, flag.fenced, flag.epoch) == ("destination", False, 3)


class _Boom(RuntimeError):
    pass


class _FailingClock(SystemClock):
    """Fails the drain's first wait, as a bug or an outage in the middle of it would."""

    def sleep(self, seconds: float) -> None:
        raise _Boom("the drain broke")


def test_an_error_during_the_drain_lifts_the_fence_and_is_raised(clients: AwsClients) -> None:
    """GIVEN every gate met WHEN the drain fails with an error THEN the fence is lifted, the
    dead letters stay unacknowledged and the error reaches the caller."""
    store = ready_store(clients)
    DeadLetters(store).add("stream", "boom", {"pk": "a"}, {"pk": "a"})
    flags = ControlFlagStore(store)
    lines: list[str] = []
    options = CutoverOptions(fenced=True, policy=Policy(ack_dead_letters=True))
    cutover = Cutover(store, flags, options, clock=_FailingClock(), out=lines.append)

    with pytest.raises(_Boom):
        cutover.run()

    flag = flags.read()
    assert (flag.active, flag.fenced, flag.epoch) == ("source", False, 2)
    assert any("the fence was lifted" in line for line in lines), lines
    assert DeadLetters(store).unacknowledged() == 1
    assert store.get(CUTOVER_ITEM) is None


def test_a_cutover_refused_by_a_drain_timeout_acknowledges_no_dead_letter(
    clients: AwsClients,
) -> None:
    """GIVEN --ack-dead-letters and a consumer that does not drain WHEN the cutover gives up
    THEN the dead letters are still unacknowledged and no CUTOVER is recorded."""
    store = ready_store(clients)
    DeadLetters(store).add("stream", "boom", {"pk": "a"}, {"pk": "a"})
    options = CutoverOptions(
        fenced=True,
        policy=Policy(ack_dead_letters=True),
        client_ttl=0.1,
        consumer_margin=0.0,
        drain_timeout=0.5,
    )
    cutover = Cutover(store, ControlFlagStore(store), options, out=lambda line: None)

    with pytest.raises(Exception, match="did not drain") as raised:
        cutover.run()

    assert getattr(raised.value, "exit_code", None) == ExitCode.GATES_UNMET
    assert DeadLetters(store).unacknowledged() == 1
    assert store.get(CUTOVER_ITEM) is None
