"""The cutover gates (ARCHITECTURE.md rule 10) as small pure functions over a snapshot.

``read_snapshot`` is the only function here that touches a service: it reads the few
control-table items the gates look at. Every gate takes that snapshot (and the policy) and says
whether it is met and, if not, why and what to do. ``check_all`` runs every gate, so an operator
sees every unmet gate at once, not just the first.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from livemigrate.control import ControlStore
from livemigrate.deadletters import DeadLetters
from livemigrate.keys import (
    CONSUMER_REVERSE,
    CONSUMER_SOURCE,
    FLAG,
    PLAN,
    RETENTION,
    ROLLBACK,
    TOMBSTONES,
    VERIFY,
)
from livemigrate.migration import BACKFILL_COMPLETE
from livemigrate.retention import DYNAMODB_STREAMS_RETENTION as DDB
from livemigrate.retention import headroom, lag_message

LAMBDA_MODE = "lambda"  # CONSUMER#source written by the Lambda handler (livemigrate.lambda_mode)


@dataclass(frozen=True)
class Snapshot:
    """The control-table items the gates read, taken at ``now``."""

    now: float
    plan: dict[str, Any] | None = None
    consumer: dict[str, Any] | None = None
    tombstones: dict[str, Any] | None = None
    verify: dict[str, Any] | None = None
    unacknowledged_dead_letters: int = 0
    # None when search is not configured; else whether the destination index exists.
    search_index_ready: bool | None = None
    search_index: str = ""
    flag: dict[str, Any] | None = field(default=None)
    reverse: dict[str, Any] | None = None
    rollback: dict[str, Any] | None = None
    retention: dict[str, Any] | None = None  # livemigrate.retention's RETENTION item
    # None when no failure queue is configured; else the Lambda consumer's OnFailure depth.
    failed_batches: int | None = None


@dataclass(frozen=True)
class Policy:
    """What the operator allows: the lag bound, heartbeat age, and acknowledged dead letters."""

    max_lag_seconds: float = 5.0
    max_heartbeat_age: float = 30.0
    ack_dead_letters: bool = False
    # An inverse transform is configured: rollback promises to lose nothing, so the reverse
    # consumer must be running before the flip.
    require_reverse: bool = False


@dataclass(frozen=True)
class Gate:
    """One gate's verdict: ``why`` says what is wrong and ``fix`` what to do (empty when met)."""

    name: str
    met: bool
    why: str = ""
    fix: str = ""

    def line(self) -> str:
        if self.met:
            return f"  [ok]   {self.name}" + (f" ({self.why})" if self.why else "")
        return f"  [FAIL] {self.name}: {self.why}\n         fix: {self.fix}"


def _num(item: dict[str, Any] | None, name: str, default: float = 0.0) -> float:
    if not item or item.get(name) is None:
        return default
    return float(item[name])


def backfill_gate(snap: Snapshot, policy: Policy) -> Gate:
    name = "backfill complete"
    state = (snap.plan or {}).get("state")
    if state == BACKFILL_COMPLETE:
        return Gate(name, True)
    why = "no backfill plan is recorded" if state is None else f"backfill state is {state!r}"
    return Gate(name, False, why, "run `livemigrate backfill` until every segment is done")


def lag_gate(snap: Snapshot, policy: Policy) -> Gate:
    name = "consumer lag under bound"
    fix = "start or restart `livemigrate consume` and wait until it has caught up"
    if snap.consumer is None:
        return Gate(name, False, "the source-stream consumer has never run", fix)
    if snap.consumer.get("mode") == LAMBDA_MODE:
        return _lambda_lag_gate(snap.consumer, policy)
    age = snap.now - _num(snap.consumer, "heartbeat_at")
    if age > policy.max_heartbeat_age:
        why = (
            f"the consumer's last heartbeat is {age:.0f}s old "
            f"(limit {policy.max_heartbeat_age:.0f}s): it is not running"
        )
        return Gate(name, False, why, fix)
    lag = _num(snap.consumer, "lag_seconds", default=float("inf"))
    if lag > policy.max_lag_seconds:
        why = f"consumer lag is {lag:.1f}s (limit {policy.max_lag_seconds:.1f}s)"
        return Gate(name, False, why, fix + ", or raise --max-lag-seconds")
    return Gate(name, True)


def _lambda_lag_gate(consumer: dict[str, Any], policy: Policy) -> Gate:
    """The consumer is a Lambda function behind an event source mapping: a quiet source sends
    no invocation, so its heartbeat ages without meaning anything; the cutover's watermark
    proves the drain (``livemigrate.lambda_mode``), one batch lane per shard."""
    name = "consumer lag under bound"
    lanes = int(_num(consumer, "parallelization_factor", 1))
    if lanes > 1:
        why = (
            f"the Lambda consumer's event source mapping runs {lanes} batches per shard at "
            "once: a cutover watermark proves only its own batch lane, so the drain cannot be "
            "proven"
        )
        fix = (
            "update the stack with ParallelizationFactor=1 (README: Deploy to AWS), wait until "
            "the mapping's IteratorAge is 0, then run the cutover again"
        )
        return Gate(name, False, why, fix)
    lag = _num(consumer, "lag_seconds", default=0.0)
    if lag > policy.max_lag_seconds:
        why = f"the Lambda consumer's lag at its last batch was {lag:.1f}s"
        fix = "wait until the event source mapping has caught up (IteratorAge near 0)"
        return Gate(name, False, why, fix + ", or raise --max-lag-seconds")
    return Gate(name, True, "Lambda consumer: the fenced drain checks it with a watermark")


def failed_batches_gate(snap: Snapshot, policy: Policy) -> Gate:
    """The Lambda consumer's OnFailure queue is empty: a message there is a batch of source
    records Lambda gave up on, never applied to the destination."""
    name = "no failed Lambda batches"
    if snap.failed_batches is None:
        return Gate(name, True, "no failure queue configured")
    if snap.failed_batches == 0:
        return Gate(name, True)
    why = (
        f"the Lambda consumer's failure queue holds {snap.failed_batches} message(s): batches "
        "of source records that were never applied to the destination"
    )
    fix = (
        "read them (`aws sqs receive-message --queue-url $LIVEMIGRATE_FAILURE_QUEUE_URL`: "
        "each names a shard and a sequence range), fix the cause, run `livemigrate verify "
        "--repair` until verify passes, then `aws sqs purge-queue --queue-url ...`"
    )
    return Gate(name, False, why, fix)


def dead_letters_gate(snap: Snapshot, policy: Policy) -> Gate:
    name = "dead letters empty or acknowledged"
    n = snap.unacknowledged_dead_letters  # unresolved: neither replayed/superseded nor acked
    if n == 0 or policy.ack_dead_letters:
        return Gate(name, True)
    return Gate(
        name,
        False,
        f"{n} unacknowledged dead letter(s) not resolved by a replay: those items may be "
        "missing from the destination",
        "`livemigrate dead-letters list` (and `show ID`); fix the transform, restart the "
        "consumers, `livemigrate dead-letters replay --all`; or `livemigrate dead-letters ack "
        "ID... --reason TEXT` (--ack-dead-letters acknowledges all)",
    )


def tombstones_gate(snap: Snapshot, policy: Policy) -> Gate:
    """Purged, and seen to be: a verification started after the purge found no tombstone.

    The ``purged`` state alone is a flag set when the purge scan ended; a tombstone write that
    landed later (a stale consumer, a retried write) would leave it true while the destination
    holds a tombstone. The verification scans the destination anyway and counts them.
    """
    name = "tombstones purged"
    state = (snap.tombstones or {}).get("state")
    if state != "purged":
        why = (
            "the tombstone purge has not run"
            if state is None
            else f"tombstones are {state!r}: readers of the destination would see deleted items"
        )
        fix = "let the consumer purge tombstones after the backfill completes"
        return Gate(name, False, why, fix)
    fix = "run `livemigrate verify` (it counts the tombstones it sees in the destination)"
    verify = snap.verify or {}
    if verify.get("tombstones") is None or _num(verify, "at") < _num(snap.tombstones, "purged_at"):
        return Gate(
            name, False, "no verification has looked at the destination since the purge", fix
        )
    seen = int(_num(verify, "tombstones"))
    if seen:
        why = f"the last verification saw {seen} tombstone(s) in the destination after the purge"
        fix = "run `livemigrate consume --finalize-tombstones` again, then `livemigrate verify`"
        return Gate(name, False, why, fix)
    return Gate(name, True)


def _losses(consumer: dict[str, Any]) -> list[tuple[float, str]]:
    """(when, what) of every loss the forward consumer recorded."""
    found = []
    if consumer.get("records_lost_at") is not None:
        shard = consumer.get("records_lost_shard")
        what = f"records of shard {shard} were trimmed before the consumer read them"
        found.append((_num(consumer, "records_lost_at"), what))
    if consumer.get("stream_changed_at") is not None:
        what = "the source stream was re-created (changes between the two were never delivered)"
        found.append((_num(consumer, "stream_changed_at"), what))
    return found


def loss_gate(snap: Snapshot, policy: Policy) -> Gate:
    """Records the forward consumer lost (trimmed past retention, or a re-created stream)
    block the cutover until a verification started after the loss passes."""
    name = "no unverified stream loss"
    losses = _losses(snap.consumer or {})
    if not losses:
        return Gate(name, True)
    at, what = max(losses)
    verify = snap.verify or {}
    if verify.get("passed") and _num(verify, "at") > at:
        return Gate(name, True, f"{what}; a later verification passed")
    ago = snap.now - at
    why = f"{what} ({ago:.0f}s ago); no verification started since then has passed"
    fix = "run `livemigrate verify --repair`, then `livemigrate verify` until it passes"
    return Gate(name, False, why, fix)


def verify_gate(snap: Snapshot, policy: Policy) -> Gate:
    name = "verification passed"
    fix = "run `livemigrate verify` (with --repair if it reports differences)"
    if snap.verify is None:
        return Gate(name, False, "no verification has run", fix)
    if not snap.verify.get("passed"):
        if snap.verify.get("search_passed") is False:  # the tables may well be at parity
            index = snap.verify.get("search_index")
            why = f"the last verification failed on the search index {index}"
            return Gate(name, False, why, fix + "; for the index: `livemigrate search resync`")
        counts = ", ".join(
            f"{k} {int(_num(snap.verify, k))}" for k in ("missing", "extra", "different")
        )
        return Gate(name, False, f"the last verification failed ({counts})", fix)
    completed = _num(snap.plan, "completed_at")
    if not completed or _num(snap.verify, "at") < completed:
        why = "the last passing verification ran before the backfill completed"
        return Gate(name, False, why, fix)
    rolled_back = _num(snap.rollback, "flipped_at")
    if rolled_back and _num(snap.verify, "at") < rolled_back:
        why = "the last passing verification ran before the last rollback"
        return Gate(name, False, why, fix)
    return Gate(name, True)


def search_gate(snap: Snapshot, policy: Policy) -> Gate:
    name = "search index ready"
    if snap.search_index_ready is None or snap.search_index_ready:
        return Gate(name, True)
    return Gate(
        name,
        False,
        f"search is configured but index {snap.search_index!r} does not exist",
        "run the search sink (`livemigrate search sync`) so the new index is built",
    )


def reverse_problems(reverse: dict[str, Any] | None, now: float, max_age: float) -> list[str]:
    """Why the reverse consumer cannot be trusted to keep the source current (empty: ok).

    The cutover's gate and ``livemigrate rollback`` both ask this.
    """
    if reverse is None:
        return ["the reverse consumer has never run (`livemigrate reverse`)"]
    problems = []
    age = now - _num(reverse, "heartbeat_at")
    if age > max_age:
        problems.append(f"the reverse consumer's last heartbeat is {age:.0f}s old: not running")
    lag = reverse.get("lag_seconds")  # the destination's DynamoDB stream keeps 24 h (rule 9)
    if lag is not None and (message := lag_message("the reverse consumer", float(lag), DDB)):
        problems.append(message)
    if reverse.get("records_lost_at") is not None:
        problems.append(
            "the reverse consumer lost records trimmed from the destination stream "
            f"({reverse.get('records_lost_shard')})"
        )
    return problems


def reverse_gate(snap: Snapshot, policy: Policy) -> Gate:
    name = "reverse consumer (lossless rollback)"
    if not policy.require_reverse:
        return Gate(name, True, "no inverse transform: a rollback loses writes made after it")
    problems = reverse_problems(snap.reverse, snap.now, policy.max_heartbeat_age)
    if not problems:
        return Gate(name, True)
    fix = (
        "start `livemigrate reverse` and keep it running through the cutover (if it lost "
        "records, rebuild the source from the destination before relying on rollback)"
    )
    return Gate(name, False, "; ".join(problems), fix)


def retention_gate(snap: Snapshot, policy: Policy) -> Gate:
    """Shows the source's retention, the backfill ETA and the lag against it (rule 9)."""
    lag = None if snap.consumer is None else snap.consumer.get("lag_seconds")
    backfilling = (snap.plan or {}).get("state") != BACKFILL_COMPLETE
    met, why, fix = headroom(snap.retention, None if lag is None else float(lag), backfilling)
    return Gate("stream retention headroom", met, why, fix)


GATES: tuple[Callable[[Snapshot, Policy], Gate], ...] = (
    backfill_gate,
    lag_gate,
    failed_batches_gate,
    dead_letters_gate,
    tombstones_gate,
    verify_gate,
    loss_gate,
    search_gate,
    reverse_gate,
    retention_gate,
)


def check_all(snap: Snapshot, policy: Policy) -> list[Gate]:
    """Every gate's verdict, in a fixed order (all are evaluated, none short-circuits)."""
    return [gate(snap, policy) for gate in GATES]


def unmet(gates: list[Gate]) -> list[Gate]:
    return [g for g in gates if not g.met]


def read_snapshot(
    store: ControlStore,
    *,
    now: float | None = None,
    search_index_ready: bool | None = None,
    search_index: str = "",
    failed_batches: int | None = None,
) -> Snapshot:
    """Read the gate items of one migration (a handful of consistent reads)."""
    return Snapshot(
        now=time.time() if now is None else now,
        plan=store.get(PLAN),
        consumer=store.get(CONSUMER_SOURCE),
        tombstones=store.get(TOMBSTONES),
        verify=store.get(VERIFY),
        unacknowledged_dead_letters=DeadLetters(store).unacknowledged(),
        search_index_ready=search_index_ready,
        search_index=search_index,
        flag=store.get(FLAG),
        reverse=store.get(CONSUMER_REVERSE),
        rollback=store.get(ROLLBACK),
        retention=store.get(RETENTION),
        failed_batches=failed_batches,
    )
