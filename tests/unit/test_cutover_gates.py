"""The cutover gates as pure functions: each refuses with its reason; all are listed at once."""

from __future__ import annotations

from typing import Any

from livemigrate.gates import (
    Policy,
    Snapshot,
    backfill_gate,
    check_all,
    dead_letters_gate,
    lag_gate,
    loss_gate,
    search_gate,
    tombstones_gate,
    unmet,
    verify_gate,
)

NOW = 10_000.0
POLICY = Policy(max_lag_seconds=5, max_heartbeat_age=30)


def ready(**changes: Any) -> Snapshot:
    """A snapshot where every gate is met, with ``changes`` applied."""
    values: dict[str, Any] = {
        "now": NOW,
        "plan": {"state": "complete", "completed_at": NOW - 100},
        "consumer": {"heartbeat_at": NOW - 2, "lag_seconds": 0.5, "records_behind": 0},
        "tombstones": {"state": "purged", "purged_at": NOW - 50},
        "verify": {
            "passed": True,
            "at": NOW - 20,
            "missing": 0,
            "extra": 0,
            "different": 0,
            "tombstones": 0,
        },
        "unacknowledged_dead_letters": 0,
    }
    values.update(changes)
    return Snapshot(**values)


def test_every_gate_is_met_on_a_ready_snapshot() -> None:
    assert unmet(check_all(ready(), POLICY)) == []


def test_backfill_gate_names_the_state() -> None:
    gate = backfill_gate(ready(plan={"state": "running"}), POLICY)
    assert not gate.met
    assert "'running'" in gate.why
    assert "livemigrate backfill" in gate.fix
    assert "no backfill plan" in backfill_gate(ready(plan=None), POLICY).why


def test_lag_gate_refuses_high_lag_stale_heartbeat_and_missing_consumer() -> None:
    high = lag_gate(ready(consumer={"heartbeat_at": NOW, "lag_seconds": 12}), POLICY)
    assert not high.met
    assert "12.0s (limit 5.0s)" in high.why
    stale = lag_gate(ready(consumer={"heartbeat_at": NOW - 300, "lag_seconds": 0}), POLICY)
    assert not stale.met
    assert "not running" in stale.why
    assert "never run" in lag_gate(ready(consumer=None), POLICY).why
    # no lag reported at all is not "no lag"
    assert not lag_gate(ready(consumer={"heartbeat_at": NOW}), POLICY).met
    assert lag_gate(ready(consumer={"heartbeat_at": NOW, "lag_seconds": 12}), Policy(20)).met


def test_dead_letter_gate_refuses_unless_acknowledged() -> None:
    gate = dead_letters_gate(ready(unacknowledged_dead_letters=3), POLICY)
    assert not gate.met
    assert "3 unacknowledged" in gate.why
    assert "--ack-dead-letters" in gate.fix
    ack = Policy(ack_dead_letters=True)
    assert dead_letters_gate(ready(unacknowledged_dead_letters=3), ack).met


def test_tombstone_gate_refuses_active_or_unknown() -> None:
    assert "'active'" in tombstones_gate(ready(tombstones={"state": "active"}), POLICY).why
    assert "has not run" in tombstones_gate(ready(tombstones=None), POLICY).why


def test_tombstone_gate_rechecks_the_destination_instead_of_trusting_the_purged_flag() -> None:
    # GIVEN the purge has run (state purged at NOW - 50)
    # WHEN the verification that followed saw a tombstone (one written after the purge scan)
    seen = {"passed": True, "at": NOW - 20, "tombstones": 2}
    gate = tombstones_gate(ready(verify=seen), POLICY)
    # THEN the gate is unmet and says why
    assert not gate.met
    assert "saw 2 tombstone(s)" in gate.why and "--finalize-tombstones" in gate.fix
    # a verification older than the purge, or one that did not count, proves nothing
    older = {"passed": True, "at": NOW - 60, "tombstones": 0}
    assert "since the purge" in tombstones_gate(ready(verify=older), POLICY).why
    uncounted = {"passed": True, "at": NOW - 20}
    assert not tombstones_gate(ready(verify=uncounted), POLICY).met
    assert not tombstones_gate(ready(verify=None), POLICY).met
    assert tombstones_gate(ready(verify={**seen, "tombstones": 0}), POLICY).met


def test_loss_gate_wants_a_passing_verification_started_after_the_loss() -> None:
    beat = {"heartbeat_at": NOW - 2, "lag_seconds": 0.5}
    lost = {**beat, "records_lost_at": NOW - 10, "records_lost_shard": "shardId-7"}
    # GIVEN the consumer recorded lost records AFTER the last passing verification (NOW - 20)
    gate = loss_gate(ready(consumer=lost), POLICY)
    assert not gate.met
    assert "shardId-7" in gate.why and "trimmed" in gate.why and "verify" in gate.fix
    assert "no unverified stream loss" in [
        g.name for g in unmet(check_all(ready(consumer=lost), POLICY))
    ]
    # a failed verification after the loss does not clear it; a passing one does
    failed = {"passed": False, "at": NOW - 5, "tombstones": 0}
    assert not loss_gate(ready(consumer=lost, verify=failed), POLICY).met
    passed = {"passed": True, "at": NOW - 5, "tombstones": 0}
    assert loss_gate(ready(consumer=lost, verify=passed), POLICY).met
    # a re-created stream is a loss too, and the latest loss counts
    changed = {**lost, "stream_changed_at": NOW - 3}
    gate = loss_gate(ready(consumer=changed, verify=passed), POLICY)
    assert not gate.met and "re-created" in gate.why
    assert loss_gate(ready(consumer=beat), POLICY).met


def test_verify_gate_refuses_failed_missing_and_stale_verifications() -> None:
    failed = {"passed": False, "at": NOW, "missing": 2, "extra": 0, "different": 1}
    gate = verify_gate(ready(verify=failed), POLICY)
    assert not gate.met
    assert "missing 2, extra 0, different 1" in gate.why
    assert "no verification" in verify_gate(ready(verify=None), POLICY).why
    before = {"passed": True, "at": NOW - 500}
    assert "before the backfill completed" in verify_gate(ready(verify=before), POLICY).why


def test_search_gate_only_applies_when_search_is_configured() -> None:
    assert search_gate(ready(search_index_ready=None), POLICY).met
    gate = search_gate(ready(search_index_ready=False, search_index="orders-m1"), POLICY)
    assert not gate.met
    assert "orders-m1" in gate.why


def test_all_unmet_gates_are_listed_not_just_the_first() -> None:
    snap = ready(
        plan={"state": "running"},
        consumer=None,
        tombstones=None,
        verify=None,
        unacknowledged_dead_letters=1,
    )
    names = [g.name for g in unmet(check_all(snap, POLICY))]
    assert names == [
        "backfill complete",
        "consumer lag under bound",
        "dead letters empty or acknowledged",
        "tombstones purged",
        "verification passed",
    ]
    assert all("fix:" in g.line() for g in unmet(check_all(snap, POLICY)))


def test_cutting_over_again_after_a_rollback_needs_a_new_verification() -> None:
    passed = {"passed": True, "at": NOW - 50}
    assert verify_gate(ready(verify=passed), POLICY).met
    later = ready(verify=passed, rollback={"flipped_at": NOW - 10})
    gate = verify_gate(later, POLICY)
    assert not gate.met and "before the last rollback" in gate.why
    assert verify_gate(ready(verify=passed, rollback={"flipped_at": NOW - 60}), POLICY).met
