"""cutover and rollback against moto: one refusal per gate, the conditional flip, the window."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from livemigrate import cli
from livemigrate.aws import AwsClients
from livemigrate.control import ControlStore
from livemigrate.deadletters import DeadLetters
from livemigrate.exitcodes import ExitCode
from livemigrate.flag import ControlFlagStore, FlagConflict, SsmFlagStore
from tests.support.cutover import Heartbeat, ready_store


def use(store: ControlStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVEMIGRATE_MIGRATION_ID", store.migration_id)
    monkeypatch.setenv("LIVEMIGRATE_SOURCE_TABLE", "orders")
    monkeypatch.setenv("LIVEMIGRATE_DESTINATION_TABLE", "orders_v2")
    monkeypatch.setenv("LIVEMIGRATE_CONTROL_TABLE", store.table)
    monkeypatch.delenv("LIVEMIGRATE_SEARCH_URL", raising=False)


@pytest.fixture
def store(clients: AwsClients, monkeypatch: pytest.MonkeyPatch) -> Iterator[ControlStore]:
    s = ready_store(clients)
    use(s, monkeypatch)
    yield s


def _backfill_running(s: ControlStore) -> None:
    s.update("PLAN", {"state": "running"})


def _lagging(s: ControlStore) -> None:
    s.update("CONSUMER#source", {"lag_seconds": 42})


def _dead_letter(s: ControlStore) -> None:
    DeadLetters(s).add("stream", "transform raised KeyError", {"pk": "a"}, {"pk": "a"})


def _tombstones_active(s: ControlStore) -> None:
    s.put("TOMBSTONES", {"state": "active"})


def _verify_failed(s: ControlStore) -> None:
    s.update("VERIFY", {"passed": False, "missing": 3})


GATES: list[tuple[str, Callable[[ControlStore], None], str]] = [
    ("backfill", _backfill_running, "backfill complete: backfill state is 'running'"),
    ("lag", _lagging, "consumer lag under bound: consumer lag is 42.0s (limit 5.0s)"),
    ("dead letters", _dead_letter, "1 unacknowledged dead letter(s)"),
    ("tombstones", _tombstones_active, "tombstones purged: tombstones are 'active'"),
    ("verify", _verify_failed, "the last verification failed (missing 3, extra 0, different 0)"),
]


@pytest.mark.parametrize(("name", "breaks", "message"), GATES, ids=[g[0] for g in GATES])
def test_each_unmet_gate_refuses_the_cutover_with_its_reason(
    store: ControlStore,
    capsys: pytest.CaptureFixture[str],
    name: str,
    breaks: Callable[[ControlStore], None],
    message: str,
) -> None:
    breaks(store)
    assert cli.main(["cutover"]) == ExitCode.GATES_UNMET
    out = capsys.readouterr().out
    assert message in out
    assert "cutover refused: 1 gate(s) unmet" in out
    assert store.get("FLAG") is None  # nothing was flipped


def test_every_unmet_gate_is_listed(
    store: ControlStore, capsys: pytest.CaptureFixture[str]
) -> None:
    for _, breaks, _ in GATES:
        breaks(store)
    assert cli.main(["cutover", "--dry-run"]) == ExitCode.GATES_UNMET
    out = capsys.readouterr().out
    assert "cutover refused: 5 gate(s) unmet" in out
    for _, _, message in GATES:
        assert message in out


def test_stale_heartbeat_and_verify_before_backfill_end_are_refused(
    store: ControlStore, capsys: pytest.CaptureFixture[str]
) -> None:
    store.update("CONSUMER#source", {"heartbeat_at": time.time() - 120})
    store.update("VERIFY", {"at": time.time() - 3600})
    assert cli.main(["cutover", "--dry-run"]) == ExitCode.GATES_UNMET
    out = capsys.readouterr().out
    assert "it is not running" in out
    assert "ran before the backfill completed" in out


def test_dry_run_with_every_gate_met_changes_nothing(
    store: ControlStore, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["cutover", "--dry-run"]) == 0
    assert "dry run: every gate is met" in capsys.readouterr().out
    assert store.get("FLAG") is None


def test_cutover_flips_the_flag_once_and_waits_for_the_drain(
    store: ControlStore, capsys: pytest.CaptureFixture[str]
) -> None:
    with Heartbeat(store):
        assert (
            cli.main(
                ["cutover", "--client-ttl", "0.1", "--consumer-margin", "0", "--drain-timeout", "5"]
            )
            == 0
        )
    out = capsys.readouterr().out
    assert "flag flipped: active table is now orders_v2 (epoch 1)" in out
    assert "the source is quiet" in out
    flag = store.get("FLAG") or {}
    assert (flag["active"], flag["table"], flag["epoch"], flag["fenced"]) == (
        "destination",
        "orders_v2",
        1,
        False,
    )
    assert (store.get("CUTOVER") or {})["drained"] is True
    # a second cutover is a no-op
    assert cli.main(["cutover"]) == 0
    assert "already cut over" in capsys.readouterr().out


def test_ack_dead_letters_lets_the_cutover_through_and_records_the_ack(
    store: ControlStore, capsys: pytest.CaptureFixture[str]
) -> None:
    _dead_letter(store)
    with Heartbeat(store):
        code = cli.main(
            [
                "cutover",
                "--ack-dead-letters",
                "--client-ttl",
                "0.1",
                "--consumer-margin",
                "0",
                "--drain-timeout",
                "5",
            ]
        )
    assert code == 0
    assert "acknowledged 1 dead letter(s)" in capsys.readouterr().out
    assert DeadLetters(store).unacknowledged() == 0


@pytest.mark.parametrize("kind", ["control", "ssm"])
def test_a_flip_with_a_stale_epoch_fails(
    store: ControlStore, clients: AwsClients, kind: str
) -> None:
    flags: Any = (
        ControlFlagStore(store)
        if kind == "control"
        else SsmFlagStore(clients.ssm, store, "orders", "orders_v2")
    )
    first, second = flags.read(), flags.read()
    won = flags.write(first.flipped("destination", time.time()), first.epoch)
    assert won.epoch == 1 and won.table == "orders_v2"
    with pytest.raises(FlagConflict, match="expected epoch 0, now 1"):
        flags.write(second.flipped("destination", time.time()), second.epoch)
    back = flags.write(won.flipped("source", time.time()), won.epoch)
    assert (flags.read().table, flags.read().epoch) == ("orders", back.epoch) == ("orders", 2)


def test_rollback_within_the_window_flips_back_and_warns(
    store: ControlStore, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ControlFlagStore(store)
    flag = flags.read()
    flags.write(flag.flipped("destination", time.time() - 30), flag.epoch)
    assert cli.main(["rollback", "--window-seconds", "600"]) == 0
    out = capsys.readouterr().out
    assert "active table is now orders (epoch 2)" in out
    assert "not in the source table" in out
    assert flags.read().active == "source"
    assert cli.main(["rollback"]) == ExitCode.GATES_UNMET  # nothing left to roll back
    assert "nothing to roll back" in capsys.readouterr().out


def test_rollback_outside_the_window_is_refused_unless_forced(
    store: ControlStore, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ControlFlagStore(store)
    flag = flags.read()
    flags.write(flag.flipped("destination", time.time() - 7200), flag.epoch)
    assert cli.main(["rollback"]) == ExitCode.GATES_UNMET
    assert "outside the 3600s window" in capsys.readouterr().out
    assert flags.read().active == "destination"
    inverse = ["--inverse-transform", "livemigrate.examples.hot_outbox:inverse"]
    # An inverse transform without a running reverse consumer would lose writes: refused too.
    assert cli.main(["rollback", *inverse]) == ExitCode.GATES_UNMET
    assert "the reverse consumer has never run" in capsys.readouterr().out
    assert flags.read().active == "destination"
    assert cli.main(["rollback", "--force", *inverse]) == 0
    out = capsys.readouterr().out
    assert "warning (--force): the reverse consumer has never run" in out
    assert "not in the source table" in out
    assert flags.read().active == "source"


def test_fenced_cutover_whose_consumer_does_not_drain_lifts_the_fence_and_flips_nothing(
    store: ControlStore, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a consumer that heartbeated once (gates pass) and then stopped
    args = ["cutover", "--fenced", "--client-ttl", "0.1", "--consumer-margin", "0"]
    assert cli.main([*args, "--drain-timeout", "0.5"]) == ExitCode.GATES_UNMET
    captured = capsys.readouterr()
    assert "writers fenced at epoch 1" in captured.out
    assert "did not drain" in captured.err
    flag = ControlFlagStore(store).read()
    assert (flag.active, flag.fenced, flag.epoch) == ("source", False, 2)
