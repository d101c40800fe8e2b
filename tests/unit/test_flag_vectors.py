"""The shared flag-protocol vectors (docs/flag-vectors.json) through the Python client.

The TypeScript client runs the same file (clients/typescript/test/vectors.test.ts). Each
scenario drives the real ``ActiveTable`` with a scripted clock (``FakeClock``), a flag store
that replays a timeline, and a DynamoDB stand-in that evaluates the flag's condition check the
way DynamoDB does (``runner`` in the JSON file says exactly how).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import pytest
from botocore.exceptions import ClientError
from hypothesis import given
from hypothesis import strategies as st

from livemigrate.client import (
    ActiveTable,
    FenceTimeout,
    LostRace,
    WriteRejected,
    _flag_moved,
    _rejected,
)
from livemigrate.clock import FakeClock
from livemigrate.control import ControlStore
from livemigrate.errors import ConfigError
from livemigrate.flag import ControlFlagStore, Flag, _initial

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parents[2] / "docs" / "flag-vectors.json").read_text()
)
RUNNER: dict[str, Any] = VECTORS["runner"]
SOURCE, DESTINATION = RUNNER["tables"]["source"], RUNNER["tables"]["destination"]
ERRORS: dict[type[Exception], str] = {
    FenceTimeout: "FenceTimeout",
    LostRace: "LostRace",
    WriteRejected: "WriteRejected",
    ConfigError: "NotCheckable",
}


def _named(section: str) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("vector", VECTORS[section], ids=lambda v: v["name"])


def _control_flags() -> ControlFlagStore:
    store = ControlStore(cast(Any, None), RUNNER["control_table"], RUNNER["migration_id"])
    return ControlFlagStore(store, SOURCE, DESTINATION)


@_named("flag_items")
def test_flag_items(vector: dict[str, Any]) -> None:
    assert Flag.from_dict(vector["item"]).to_dict() == vector["expect"]


@_named("fence")
def test_fence(vector: dict[str, Any]) -> None:
    assert Flag.from_dict(vector["flag"]).is_fenced(vector["now"]) is vector["fenced"]


@_named("condition_check")
def test_condition_check(vector: dict[str, Any]) -> None:
    flag = Flag.from_dict({"table": SOURCE, "epoch": vector["epoch"]})
    assert _control_flags().condition_check(flag) == vector["expect"]


def _cancelled(code: str, reasons: list[dict[str, str]]) -> ClientError:
    response: Any = {"Error": {"Code": code, "Message": code}, "CancellationReasons": reasons}
    return ClientError(response, "TransactWriteItems")


@_named("cancellation")
def test_cancellation(vector: dict[str, Any]) -> None:
    exc = _cancelled(vector["code"], vector["reasons"])
    if _flag_moved(exc, vector["writes"]):
        got = "flag_moved"
    else:
        error = _rejected(exc, vector["writes"])
        got = "rejected" if isinstance(error, WriteRejected) else "other"
        if isinstance(error, WriteRejected):
            assert _codes(error) == vector["rejected_codes"]
    assert got == vector["expect"]


def _codes(error: WriteRejected) -> list[str]:
    return [r["Code"] for r in error.reasons if r.get("Code") not in (None, "None")]


class TimelineStore:
    """The flag store of a scenario: the flag of the timeline entry in effect now."""

    def __init__(self, timeline: list[dict[str, Any]], clock: FakeClock) -> None:
        self.timeline = timeline
        self.clock = clock
        self.reads = 0

    def item(self) -> dict[str, Any] | None:
        held = None
        for entry in self.timeline:
            if entry["at"] <= self.clock.now():
                held = entry["flag"]
        return held

    def read(self) -> Flag:
        self.reads += 1
        item = self.item()
        return _initial(SOURCE, DESTINATION) if item is None else Flag.from_dict(item)

    def write(self, new: Flag, expected_epoch: int) -> Flag:
        raise AssertionError("clients never write the flag")


class CheckableStore(TimelineStore):
    def condition_check(self, flag: Flag) -> dict[str, Any]:
        return _control_flags().condition_check(flag)


class ScriptedDynamo:
    """``transact_write_items`` as the runner's 'transaction' rule describes."""

    def __init__(self, clock: FakeClock, store: TimelineStore) -> None:
        self.clock = clock
        self.store = store
        self.script: list[dict[str, Any]] = []
        self.attempts: list[dict[str, Any]] = []

    def transact_write_items(self, TransactItems: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803
        check = TransactItems[-1]["ConditionCheck"]
        ((body,),) = [list(TransactItems[0].values())]
        epoch = int(check["ExpressionAttributeValues"][":epoch"]["N"])
        plan = self.script[len(self.attempts)] if len(self.attempts) < len(self.script) else {}
        attempt = {"table": body["TableName"], "epoch": epoch, "outcome": "ok"}
        self.attempts.append(attempt)
        self.clock.advance(plan.get("latency", 0.0))
        if plan.get("error"):
            attempt["outcome"] = "error"
            raise _cancelled(plan["error"], [])
        held = self.store.item()
        if held is None:
            flag_holds = check["ConditionExpression"].startswith("attribute_not_exists(#epoch)")
        else:
            flag_holds = int(held["epoch"]) == epoch
        app_holds = plan.get("app_condition") != "fails"
        if flag_holds and app_holds:
            return {}
        attempt["outcome"] = "rejected" if flag_holds else "flag_moved"
        reasons = [
            {"Code": "None" if ok else "ConditionalCheckFailed"} for ok in (app_holds, flag_holds)
        ]
        raise _cancelled("TransactionCanceledException", reasons)


def _call(active: ActiveTable, call: str) -> dict[str, Any]:
    def checked_write() -> str:
        return active.put(
            lambda table: {"pk": {"S": "k"}, "sk": {"S": "v"}},
            ConditionExpression="attribute_not_exists(pk)",
        )

    calls = {
        "active_table": active.active_table,
        "table_for_write": active.table_for_write,
        "checked_write": checked_write,
    }
    try:
        return {"table": calls[call]()}
    except (FenceTimeout, LostRace, WriteRejected, ConfigError) as exc:
        out: dict[str, Any] = {"error": ERRORS[type(exc)]}
        if isinstance(exc, WriteRejected):
            out["rejected_codes"] = _codes(exc)
        return out
    except ClientError as exc:
        return {"error": "Other", "code": exc.response["Error"]["Code"]}


@_named("scenarios")
def test_scenario(vector: dict[str, Any]) -> None:
    settings = {**RUNNER["defaults"], **vector.get("client", {})}
    clock = FakeClock(start=vector.get("start", settings["start"]))
    kind = TimelineStore if vector.get("checkable") is False else CheckableStore
    store = kind(vector["timeline"], clock)
    dynamo = ScriptedDynamo(clock, store)
    active = ActiveTable(
        store,
        ttl=settings["ttl"],
        poll=settings["poll"],
        max_wait=settings["max_wait"],
        max_races=settings["max_races"],
        clock=clock,
        dynamodb=cast(Any, dynamo) if kind is CheckableStore else None,
    )
    for index, step in enumerate(vector["steps"]):
        dynamo.script, dynamo.attempts = step.get("attempts", []), []
        clock.advance(max(0.0, step["at"] - clock.now()))
        got = _call(active, step["call"])
        expect = step["expect"]
        what = f"step {index}"
        for field in ("table", "error", "code", "rejected_codes"):
            assert got.get(field) == expect.get(field), (what, field, got)
        assert store.reads == expect["reads"], what
        assert active.races == expect.get("races", active.races), what
        assert dynamo.attempts == expect.get("attempts", dynamo.attempts), what
        assert clock.now() == pytest.approx(expect.get("now", clock.now()), abs=1e-6), what


# -- beyond the fixed vectors: any timeline ------------------------------------------------------

_VERSION = st.tuples(
    st.floats(min_value=0.01, max_value=0.5),  # seconds after the previous version
    st.sampled_from(["source", "destination"]),
    st.booleans(),  # fenced
    st.floats(min_value=0.0, max_value=1.0),  # fence length
)


@given(
    versions=st.lists(_VERSION, max_size=8),
    latencies=st.lists(st.floats(min_value=0.0, max_value=0.4), max_size=6),
    ttl=st.sampled_from([0.0, 0.3, 1.0]),
    warm=st.booleans(),
    delay=st.floats(min_value=0.0, max_value=2.0),
)
def test_a_checked_write_lands_only_where_the_flag_points_when_it_lands(
    versions: list[tuple[float, str, bool, float]],
    latencies: list[float],
    ttl: float,
    warm: bool,
    delay: float,
) -> None:
    """Whatever the flag does while a checked write is on its way, a write that succeeds
    landed on the table the flag named at that moment, with that flag's epoch."""
    start = 1000.0
    timeline: list[dict[str, Any]] = [{"at": 0, "flag": None}]
    at = start
    for epoch, (gap, side, fenced, length) in enumerate(versions, start=1):
        at += gap
        table = DESTINATION if side == "destination" else SOURCE
        flag = {"active": side, "table": table, "epoch": epoch, "fenced": fenced}
        timeline.append({"at": at, "flag": {**flag, "fenced_until": at + length}})
    clock = FakeClock(start=start)
    store = CheckableStore(timeline, clock)
    dynamo = ScriptedDynamo(clock, store)
    dynamo.script = [{"latency": latency} for latency in latencies]
    active = ActiveTable(store, ttl=ttl, max_races=6, clock=clock, dynamodb=cast(Any, dynamo))
    if warm:  # the application read the flag before: the write starts from a cached flag
        active.active_table()
    clock.advance(delay)
    got = _call(active, "checked_write")
    landed = [a for a in dynamo.attempts if a["outcome"] == "ok"]
    if "table" not in got:
        assert got["error"] == "LostRace" and not landed
        return
    held = store.read()  # the flag in effect when the write landed (the clock stopped there)
    assert landed == [{"table": got["table"], "epoch": held.epoch, "outcome": "ok"}]
    assert got["table"] == held.table and not held.is_fenced(clock.now())
