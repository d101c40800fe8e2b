"""The destination-table sink for S -> D: stream records through the transform, version rule.

For each record (ARCHITECTURE.md rules 2, 3, 5):

- NewImage is transformed; every output is written with ``put_if_newer(item, seq)``;
- OldImage is transformed too; destination keys it maps to that NewImage no longer maps to are
  removed (an update that moved the item leaves no orphan);
- REMOVE removes every destination key of OldImage;
- a removal is a tombstone while the backfill runs (a late bulk put of the deleted item then
  fails its put-if-absent), and a real delete once ``Migration.backfill_complete()`` is true; the
  switch is recorded as ``real_deletes_since`` on ``CONSUMER#<name>`` (tombstone finalisation
  waits for it);
- a transform failure on NewImage cannot be retried: ``ApplyFailure(retryable=False)`` and the
  engine dead-letters the raw record. A failing OldImage cannot have reached D (the same
  deterministic transform failed for the backfill too); the keys its item still owns are the
  ones remembered when that version's own record failed (``OwnershipRecords``, issue 10 item 8);
- forward writes record their source item (rule 12): a removal derived from u's OldImage
  removes a key only while u owns it; a put over a key another item owns is decided by reading
  the source (``stream_consumer.handoff``), a genuine collision is dead-lettered.

Records the other direction's consumer produced (``echo_of``: the reverse consumer's writes to
the source, or, for the reverse consumer, the forward consumer's writes to the destination) are
skipped: they are already where they came from (``livemigrate.replication``). The same applier
with an inverse transform and the reverse marks is the reverse consumer's sink.

Within one batch, operations are collapsed to the newest per destination key (the version rule
makes older ones invisible in the end state) and run in parallel on a small thread pool; one key
never has two writes in flight, so per-key order holds. A failed write is reported at the
earliest record folded into it, so everything before the reported index is really applied.
The reverse consumer's removals ask a guard first (is the source item still the one the removed
destination key came from?), and its ops on one key run one by one instead (``_fold``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from livemigrate import fencing
from livemigrate.clock import Clock, SystemClock
from livemigrate.control import ControlStore
from livemigrate.counters import ConsumerMetric
from livemigrate.destination import DestinationWriter, Held, Outcome
from livemigrate.errors import TransformOutputError
from livemigrate.flag import ControlFlagStore, FlagView
from livemigrate.items import TypedItem, key_id, to_plain
from livemigrate.outage import is_transient
from livemigrate.ownership import OwnershipRecords, SourceReader, TableReader, owner_id
from livemigrate.records import ApplyFailure, StreamRecord
from livemigrate.replication import REVERSE, DeleteMarking, Marks, written_by
from livemigrate.retired import RetiredTable
from livemigrate.transform import Transformer
from stream_consumer.handoff import Collision, Handoff, Verdict, collision_reason
from stream_consumer.metrics import Metrics
from stream_consumer.tombstones import SETTLE_SECONDS, TombstoneWindow, record_switch

if TYPE_CHECKING:
    from livemigrate.migration import Migration

log = logging.getLogger("livemigrate.consumer.applier")

_OUTCOME_METRIC: dict[Outcome, ConsumerMetric] = {
    Outcome.APPLIED: "writes_applied_total",
    Outcome.STALE: "writes_stale_total",
    Outcome.TOMBSTONED: "tombstones_written_total",
    Outcome.DELETED: "deletes_total",
    Outcome.NOT_OWNER: "removals_not_owner_total",
}
# A handoff whose key changed hands again before it landed is decided afresh, a few times.
_CLAIM_ROUNDS = 4


@dataclass(frozen=True)
class Op:
    """One destination write: a put of ``item`` or a removal of ``key``, at ``seq``."""

    key: TypedItem
    seq: str
    item: TypedItem | None  # None: remove
    first_index: int  # earliest record in the batch folded into this op
    orphan: bool = False  # a key the change moved away from (rule 5)
    origin: TypedItem | None = None  # the key of the record's own table
    owner: str | None = None  # owner_id(origin) when the writer records owners (rule 12)
    index: int = 0  # the record this op's item or removal comes from


class RemovalGuard(Protocol):
    """Decides whether a removal may go ahead (the reverse consumer's, see reverse.py)."""

    def __call__(self, key: TypedItem, origin: TypedItem) -> Removal: ...


@dataclass(frozen=True)
class Removal:
    """A guard's verdict: go ahead (expecting ``held`` as the item's stamp) or keep the item."""

    proceed: bool
    held: str | None = None


@dataclass(frozen=True)
class DeleteDecision:
    """Tombstones or real deletes; a tombstone decision is safe only until ``until``
    (monotonic), when the purge may start (``stream_consumer.tombstones``)."""

    real: bool
    until: float = float("inf")

    def fence(self, clock: Clock, within: fencing.Fence | None) -> fencing.Fence | None:
        """What guards a key's writes: ``within`` (the shard's), narrowed for tombstones."""
        return within if self.real else TombstoneWindow(clock, self.until, within)


class DeleteMode:
    """Tombstones until the backfill is complete, then real deletes (cached, refreshed).

    Parameters
    ----------
    backfill_complete:
        Reads the plan state (``Migration.backfill_complete``).
    store, consumer:
        Where ``real_deletes_since`` is recorded when the switch happens.
    refresh_seconds:
        How long a "backfill still running" answer is trusted.
    settle_seconds, margin:
        Tombstone finalisation purges ``settle_seconds`` after the switch: a tombstone
        decision is safe for ``settle_seconds - margin`` (default margin: a third) after the
        check that made it.
    keep_tombstones:
        A source that delivers out of order (Kinesis): deletes stay tombstones after the
        switch too, purged only below the watermark (``stream_consumer.watermark``), so a late
        older put never finds the item absent (rule 15). The switch is still recorded: the
        purge waits for it (the backfill is complete and quiet).
    """

    def __init__(
        self,
        backfill_complete: Callable[[], bool],
        store: ControlStore,
        consumer: str,
        clock: Clock,
        refresh_seconds: float = 5.0,
        *,
        settle_seconds: float = SETTLE_SECONDS,
        margin: float | None = None,
        keep_tombstones: bool = False,
    ) -> None:
        self.keep_tombstones = keep_tombstones
        self._complete = backfill_complete
        self.store = store
        self.consumer = consumer
        self.clock = clock
        self.window = settle_seconds - (settle_seconds / 3 if margin is None else margin)
        # A cached "tombstones" answer is reused while at least half its window is left.
        self.refresh_seconds = min(refresh_seconds, self.window / 2)
        self._real = False
        self._checked = float("-inf")  # monotonic, taken before the plan was read
        self._lock = threading.Lock()

    def decide(self) -> DeleteDecision:
        """Real deletes once the backfill is complete (never switches back); else tombstones,
        with the deadline of the check behind the answer."""
        with self._lock:
            if self._real:
                return self._after_switch()
            started = self.clock.monotonic()
            if started - self._checked >= self.refresh_seconds:
                self._checked = started
                if self._complete():
                    self._switch(self.clock.now())
                    return self._after_switch()
            return DeleteDecision(False, self._checked + self.window)

    def _after_switch(self) -> DeleteDecision:
        # Kept tombstones are purged by the watermark, which only removes tombstones older
        # than every record still to come: no deadline on writing them.
        return DeleteDecision(not self.keep_tombstones)

    def real_deletes(self) -> bool:
        """True once the backfill is complete (never switches back)."""
        self.decide()
        return self._real

    def _switch(self, now: float) -> None:
        record_switch(self.store, self.consumer, now)
        self._real = True
        log.info("backfill complete: %s consumer now deletes for real", self.consumer)


class DestinationApplier:
    """A ``RecordSink`` writing the destination table of one migration.

    Parameters
    ----------
    transformer:
        The migration's transform (the same one the backfill runs).
    writer:
        The destination writer (version rule, tombstones).
    mode:
        Tombstones or real deletes.
    metrics:
        Where outcomes are counted.
    threads:
        Parallel writes per batch (different keys only).
    echo_of:
        The marks of the consumer writing the other way; its records are skipped.
    on_heartbeat:
        Called at each engine heartbeat (reports, checks).
    guard:
        Asked before each removal (the reverse consumer: does the item still map to the
        removed key?); None removes by the version rule alone.
    retired:
        Freezes the records of a table the flag has retired (rule 13) and, on the
        destination's stream, skips what was written before it became active; None applies all.
    marking:
        Decides per batch whether deletes are marked (the forward consumer); None leaves it to
        the writer's ``mark_deletes``.
    source:
        Reads a source item now (consistent), to decide a key another item owns (rule 12);
        without it such a put is dead-lettered.
    ownership:
        Where keys owned before a failing version and collisions are recorded (item 8).
    """

    def __init__(
        self,
        transformer: Transformer,
        writer: DestinationWriter,
        mode: DeleteMode,
        metrics: Metrics,
        threads: int = 8,
        *,
        echo_of: Marks = REVERSE,
        on_heartbeat: Callable[[], None] | None = None,
        guard: RemovalGuard | None = None,
        retired: RetiredTable | None = None,
        marking: DeleteMarking | None = None,
        source: SourceReader | None = None,
        ownership: OwnershipRecords | None = None,
    ) -> None:
        self.transformer = transformer
        self.writer = writer
        self.mode = mode
        self.metrics = metrics
        self.echo_of = echo_of
        self.on_heartbeat = on_heartbeat
        self.guard = guard
        self.retired = retired
        self.marking = marking
        self.ownership = ownership
        self.owned = writer.marks.owner_attr is not None
        self.handoff = (
            None if source is None else Handoff(source, transformer, tuple(writer.key_names))
        )
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="apply")
        if getattr(writer, "client", None) is not None:  # lease fences guard our writes (rule 11)
            fencing.install(writer.client)

    @classmethod
    def for_migration(
        cls,
        migration: Migration,
        metrics: Metrics,
        *,
        consumer: str = "source",
        clock: Clock | None = None,
        threads: int = 8,
        refresh_seconds: float = 5.0,
        settle_seconds: float = SETTLE_SECONDS,
        source: SourceReader | None = None,
        keep_tombstones: bool | None = None,
    ) -> DestinationApplier:
        """The source consumer's applier; ``source`` defaults to the source table;
        ``keep_tombstones`` defaults to whether the change source delivers out of order."""
        clock = clock or SystemClock()
        mode = DeleteMode(
            migration.backfill_complete,
            migration.store,
            consumer,
            clock,
            refresh_seconds,
            settle_seconds=settle_seconds,
            keep_tombstones=(
                migration.settings.change_source == "kinesis"
                if keep_tombstones is None
                else keep_tombstones
            ),
        )
        flags = ControlFlagStore(migration.store, migration.source.name, migration.destination.name)
        view = FlagView(flags, clock)
        return cls(
            migration.transformer,
            migration.writer,
            mode,
            metrics,
            threads,
            retired=RetiredTable(view, "source", migration.store, consumer),
            marking=DeleteMarking(view),
            source=source or TableReader(migration.clients.dynamodb, migration.source.name),
            ownership=OwnershipRecords(migration.store),
        )

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def on_idle(self) -> None:
        """Called by the engine at each heartbeat: lets the delete mode switch on time."""
        self.mode.real_deletes()
        if self.on_heartbeat is not None:
            self.on_heartbeat()

    # -- RecordSink ---------------------------------------------------------------------------
    def apply(self, records: Sequence[StreamRecord]) -> None:
        fence = fencing.current()  # the engine's lease fence: the pool's threads check it too
        frozen, forward = self.retired.classify(records) if self.retired else (set(), set())
        if forward:
            self.metrics.inc("echoes_skipped_total", len(forward))
        ops: dict[str, list[Op]] = {}
        bad: ApplyFailure | None = None
        for index, record in enumerate(records):
            if index in frozen or index in forward:
                continue
            try:
                planned = self.plan(record, index)
            except TransformOutputError as exc:
                bad = ApplyFailure(index, f"transform failed: {exc.reason}", retryable=False)
                break
            for op in planned:
                self._fold(ops.setdefault(key_id(op.key), []), op)
        failed = self._write(list(ops.values()), fence)
        if failed is not None and (bad is None or failed.index < bad.index):
            raise failed
        # Records from a failed one on are delivered again: report only those before it.
        limit = len(records) if bad is None else bad.index
        self._report_frozen(records, {i for i in frozen if i < limit})
        if bad is not None:
            raise bad

    def _report_frozen(self, records: Sequence[StreamRecord], frozen: set[int]) -> None:
        """Count the retired table's late changes; the other consumer's echoes among them
        (its writes to the retired table, which it replicates) are no one's late changes."""
        late = {i for i in frozen if not written_by(self.echo_of, records[i])}
        if len(frozen) > len(late):
            self.metrics.inc("echoes_skipped_total", len(frozen) - len(late))
        if late and self.retired is not None:
            self.metrics.inc("retired_writes_total", len(late))
            self.retired.report(records, late)

    def _fold(self, queue: list[Op], op: Op) -> None:
        """Queue ``op`` behind the earlier ops of its key in this batch.

        Without a guard, consecutive ops of one source item on a key are folded into the one
        with the newest version, the end state (the version rule makes the others invisible).
        Ops of different source items on one key (a key handed from one to another within
        the batch, rule 12) each decide by ownership: they run in order. With
        a guard (the reverse consumer) several destination keys map to one source key and a
        removal depends on what the earlier put left: every op runs, in order.
        """
        if queue and self.guard is None and queue[-1].origin == op.origin:
            # The newer version, not the later record: a source that delivers out of order
            # (Kinesis) can put an item's older change after its newer one in a batch.
            newest = op if op.seq >= queue[-1].seq else queue[-1]
            queue[-1] = replace(newest, first_index=queue[-1].first_index)
        else:
            queue.append(op)

    def plan(self, record: StreamRecord, index: int) -> list[Op]:
        """The destination writes one record needs (raises TransformOutputError on NewImage)."""
        if written_by(self.echo_of, record):
            self.metrics.inc("echoes_skipped_total")
            return []
        seq = record.sequence_number
        owner = owner_id(record.keys) if self.owned else None
        ops = [
            Op(self.writer.key(item), seq, item, index, False, record.keys, owner, index)
            for item in self._new_outputs(record, owner)
        ]
        kept = {key_id(op.key) for op in ops}
        orphan = record.new_image is not None
        for key in self._old_keys(record, owner):
            if key_id(key) not in kept:
                kept.add(key_id(key))
                ops.append(Op(key, seq, None, index, orphan, record.keys, owner, index))
        return ops

    def _new_outputs(self, record: StreamRecord, owner: str | None) -> list[TypedItem]:
        if record.new_image is None:
            return []
        try:
            return self.transformer.run(to_plain(record.new_image))
        except TransformOutputError:
            self._remember_owned(record, owner)
            raise

    def _remember_owned(self, record: StreamRecord, owner: str | None) -> None:
        """This version fails the transform (its record is dead-lettered): remember the keys
        its item owns until a version transforms again, which the next record's OldImage (this
        version) cannot tell (issue 10 item 8). Only on this rare path, never per write."""
        if owner is None or self.ownership is None:
            return
        keys: list[TypedItem] = []
        if record.old_image is not None:
            try:
                keys = [
                    self.writer.key(o) for o in self.transformer.run(to_plain(record.old_image))
                ]
            except TransformOutputError:
                return  # the record that made that version failing remembered them already
        self.ownership.remember(owner, keys, record.sequence_number)

    def _old_keys(self, record: StreamRecord, owner: str | None) -> list[TypedItem]:
        if record.old_image is None:
            return []
        try:
            return [self.writer.key(o) for o in self.transformer.run(to_plain(record.old_image))]
        except TransformOutputError as exc:
            log.debug("old image of %s does not transform (%s)", record.keys, exc.reason)
        # That version was never written to D (the same deterministic transform failed
        # everywhere); what its item owns is what the version before it mapped to.
        if owner is None or self.ownership is None:
            return []
        return self.ownership.owned(owner)

    def _write(
        self, queues: list[list[Op]], fence: fencing.Fence | None = None
    ) -> ApplyFailure | None:
        """Run each key's queue in order, different keys in parallel; the earliest failure."""
        if not queues:
            return None
        results = list(self._pool.map(lambda queue: self._run_guarded(queue, fence), queues))
        failures = [failure for failure in results if failure is not None]
        if not failures:
            return None
        return min(failures, key=lambda failure: failure.index)

    def _run_guarded(self, queue: list[Op], fence: fencing.Fence | None) -> ApplyFailure | None:
        """One key's queue under the caller's ``fence`` (rule 11). A removal decides tombstone
        or delete when its queue starts, and a tombstone is written only within the window of
        that decision (``stream_consumer.tombstones``)."""
        removes = any(op.item is None for op in queue)
        decision = self.mode.decide() if removes else DeleteDecision(True)
        with fencing.guarded(decision.fence(self.mode.clock, fence)):
            return self._run_queue(queue, not decision.real)

    def _run_queue(self, queue: list[Op], tombstone: bool) -> ApplyFailure | None:
        for op in queue:
            failure = self._one(op, tombstone)
            if failure is not None:
                return failure
        return None

    def _remove(self, op: Op, tombstone: bool) -> Outcome:
        """A removal by the version and ownership rules; a real delete is marked when the flag
        asks for it, and sent unmarked only while the flag read that allows it is fresh."""
        if tombstone or self.marking is None:
            return self.writer.remove(op.key, op.seq, tombstone=tombstone, owner=op.owner)
        mark, fence = self.marking.decide()
        with fencing.guarded(fence):
            return self.writer.remove(op.key, op.seq, tombstone=False, owner=op.owner, mark=mark)

    def _one(self, op: Op, tombstone: bool) -> ApplyFailure | None:
        """Run one write; the failure, or None when it is durably done."""
        try:
            outcome = self._write_op(op, tombstone)
        except Collision as exc:
            return self._collided(op, exc)
        except (ClientError, BotoCoreError) as exc:
            if is_transient(exc):
                raise  # an outage: the engine rides it out (never a dead letter)
            return ApplyFailure(op.first_index, f"destination write failed: {exc}")
        if outcome is Outcome.CHANGED:
            return ApplyFailure(op.first_index, "destination key kept changing hands; retried")
        if outcome is None:
            return None
        self.metrics.inc(_OUTCOME_METRIC[outcome])
        if op.orphan and outcome in (Outcome.TOMBSTONED, Outcome.DELETED):
            self.metrics.inc("orphans_removed_total")
        return None

    def _write_op(self, op: Op, tombstone: bool) -> Outcome | None:
        """One op's write; None when it was skipped (and counted) without a write."""
        if op.item is not None:
            return (
                self.writer.put_if_newer(op.item, op.seq) if op.owner is None else self._claim(op)
            )
        if self.guard is not None and op.origin is not None:
            verdict = self.guard(op.key, op.origin)
            if not verdict.proceed:
                self.metrics.inc("removals_kept_total")
                return None
            return self.writer.remove_unchanged(op.key, op.seq, verdict.held)
        return self._remove(op, tombstone)

    def _claim(self, op: Op) -> Outcome | None:
        """A put of source item ``op.owner``'s output, handing the key over from another item
        that no longer maps to it (rule 12, ``stream_consumer.handoff``)."""
        assert op.item is not None and op.owner is not None and op.origin is not None
        held = None
        for _ in range(_CLAIM_ROUNDS):
            outcome, found = self.writer.claim(op.item, op.seq, op.owner, held)
            if outcome is Outcome.CHANGED:
                held = None  # decided on an item that is gone: try the plain claim again
                continue
            if outcome is not Outcome.OWNED_BY_OTHER:
                if held is not None and outcome is Outcome.APPLIED:
                    self.metrics.inc("handoffs_total")
                return outcome
            assert found is not None
            verdict = self._verdict(op.key, op.origin, found)
            if verdict is Verdict.COLLISION:
                raise Collision(collision_reason(op.key, op.origin, found))
            if verdict is Verdict.SKIP:
                self.metrics.inc("claims_skipped_total")
                return None
            held = found
        return Outcome.CHANGED

    def _verdict(self, key: TypedItem, claimant: TypedItem, held: Held) -> Verdict:
        if self.handoff is not None:
            return self.handoff.verdict(key, claimant, held)
        # Without a source reader only a removal in progress can be decided.
        return Verdict.HAND_OVER if held.removed else Verdict.COLLISION

    def _collided(self, op: Op, exc: Collision) -> ApplyFailure:
        """Dead-letter the record (not retryable) and count it where status shows it."""
        try:
            if self.ownership is not None:
                self.ownership.count_collision()
        except (ClientError, BotoCoreError) as error:
            return ApplyFailure(op.first_index, f"control table write failed: {error}")
        self.metrics.inc("collisions_total")
        log.error("%s", exc.reason)
        return ApplyFailure(op.index, exc.reason, retryable=False)
