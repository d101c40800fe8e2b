"""The dashboard's phase line, from the control-table items it is given (pure)."""

from __future__ import annotations

from typing import Any

from livemigrate.gates import Gate
from livemigrate.status import _phase

Groups = dict[str, list[tuple[str, dict[str, Any]]]]
COMPLETE = {"state": "complete"}
SOURCE_CONSUMER = ("CONSUMER#source", {"heartbeat_at": 1.0})
REVERSE_CONSUMER = ("CONSUMER#reverse", {"heartbeat_at": 1.0})


def phase(groups: Groups, plan: dict[str, Any] | None = None, unmet: bool = False) -> str:
    gates = [Gate("verification passed", not unmet, "why", "fix")]
    return _phase(plan or {}, groups, gates)


def test_phases_before_the_cutover() -> None:
    assert phase({}).startswith("not started")
    assert phase({"CONSUMER": [SOURCE_CONSUMER]}) == "consumer running, backfill not started"
    running = {"state": "running"}
    assert phase({"CONSUMER": [SOURCE_CONSUMER]}, running) == "backfilling"
    waiting = phase({"CONSUMER": [SOURCE_CONSUMER]}, COMPLETE, unmet=True)
    assert waiting == "backfill complete; cutover gates not yet met"
    assert phase({"CONSUMER": [SOURCE_CONSUMER]}, COMPLETE) == "ready for cutover"


def test_cut_over_says_whether_a_rollback_would_keep_the_writes() -> None:
    flag = [("FLAG", {"active": "destination"})]
    assert phase({"FLAG": flag, "CONSUMER": [SOURCE_CONSUMER]}, COMPLETE) == "cut over"
    with_reverse = phase({"FLAG": flag, "CONSUMER": [SOURCE_CONSUMER, REVERSE_CONSUMER]})
    assert with_reverse.startswith("cut over (the reverse consumer keeps the source current")


def test_a_rollback_is_shown_once_the_source_is_active_again() -> None:
    groups: Groups = {
        "FLAG": [("FLAG", {"active": "source", "epoch": 2})],
        "CONSUMER": [SOURCE_CONSUMER, REVERSE_CONSUMER],
        "ROLLBACK": [("ROLLBACK", {"reverse": True})],
    }
    assert phase(groups, COMPLETE).startswith("rolled back (the source is active")
