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
  deterministic transform failed for the backfill too), so it simply removes nothing.

Within one batch, operations are collapsed to the newest per destination key (the version rule
makes older ones invisible in the end state) and run in parallel on a small thread pool; one key
never has two writes in flight, so per-key order holds. A failed write is reported at the
earliest record folded into it, so everything before the reported index is really applied.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from livemigrate.clock import Clock, SystemClock
from livemigrate.control import ControlStore
from livemigrate.destination import DestinationWriter, Outcome
from livemigrate.errors import TransformOutputError
from livemigrate.items import TypedItem, key_id, to_plain
from livemigrate.records import ApplyFailure, StreamRecord
from livemigrate.transform import Transformer
from stream_consumer.metrics import Metrics

if TYPE_CHECKING:
    from livemigrate.migration import Migration

log = logging.getLogger("livemigrate.consumer.applier")

_OUTCOME_METRIC = {
    Outcome.APPLIED: "writes_applied_total",
    Outcome.STALE: "writes_stale_total",
    Outcome.TOMBSTONED: "tombstones_written_total",
    Outcome.DELETED: "deletes_total",
}


@dataclass(frozen=True)
class Op:
    """One destination write: a put of ``item`` or a removal of ``key``, at ``seq``."""

    key: TypedItem
    seq: str
    item: TypedItem | None  # None: remove
    first_index: int  # earliest record in the batch folded into this op
    orphan: bool = False  # a key the change moved away from (rule 5)


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
    """

    def __init__(
        self,
        backfill_complete: Callable[[], bool],
        store: ControlStore,
        consumer: str,
        clock: Clock,
        refresh_seconds: float = 5.0,
    ) -> None:
        self._complete = backfill_complete
        self.store = store
        self.consumer = consumer
        self.clock = clock
        self.refresh_seconds = refresh_seconds
        self._real = False
        self._checked = float("-inf")
        self._lock = threading.Lock()

    def real_deletes(self) -> bool:
        """True once the backfill is complete (never switches back)."""
        with self._lock:
            now = self.clock.now()
            if self._real or now - self._checked < self.refresh_seconds:
                return self._real
            self._checked = now
            if self._complete():
                self._switch(now)
            return self._real

    def _switch(self, now: float) -> None:
        self.store.update(
            f"CONSUMER#{self.consumer}",
            {"real_deletes_since": now},
            condition="attribute_not_exists(#real_deletes_since)",
        )
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
    """

    def __init__(
        self,
        transformer: Transformer,
        writer: DestinationWriter,
        mode: DeleteMode,
        metrics: Metrics,
        threads: int = 8,
    ) -> None:
        self.transformer = transformer
        self.writer = writer
        self.mode = mode
        self.metrics = metrics
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="apply")

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
    ) -> DestinationApplier:
        mode = DeleteMode(
            migration.backfill_complete,
            migration.store,
            consumer,
            clock or SystemClock(),
            refresh_seconds,
        )
        return cls(migration.transformer, migration.writer, mode, metrics, threads)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def on_idle(self) -> None:
        """Called by the engine when no records came: lets the delete mode switch on time."""
        self.mode.real_deletes()

    # -- RecordSink ---------------------------------------------------------------------------
    def apply(self, records: Sequence[StreamRecord]) -> None:
        tombstone = not self.mode.real_deletes()
        ops: dict[str, Op] = {}
        bad: ApplyFailure | None = None
        for index, record in enumerate(records):
            try:
                planned = self.plan(record, index)
            except TransformOutputError as exc:
                bad = ApplyFailure(index, f"transform failed: {exc.reason}", retryable=False)
                break
            for op in planned:
                held = ops.get(key_id(op.key))
                first = op.first_index if held is None else held.first_index
                ops[key_id(op.key)] = Op(op.key, op.seq, op.item, first, op.orphan)
        failed = self._write(list(ops.values()), tombstone)
        if failed is not None and (bad is None or failed.index < bad.index):
            raise failed
        if bad is not None:
            raise bad

    def plan(self, record: StreamRecord, index: int) -> list[Op]:
        """The destination writes one record needs (raises TransformOutputError on NewImage)."""
        seq = record.sequence_number
        new_items = self.transformer.run(to_plain(record.new_image)) if record.new_image else []
        ops = [Op(self.writer.key(item), seq, item, index) for item in new_items]
        kept = {key_id(op.key) for op in ops}
        for old in self._old_outputs(record):
            key = self.writer.key(old)
            if key_id(key) not in kept:
                kept.add(key_id(key))
                orphan = record.new_image is not None
                ops.append(Op(key, seq, None, index, orphan=orphan))
        return ops

    def _old_outputs(self, record: StreamRecord) -> list[TypedItem]:
        if record.old_image is None:
            return []
        try:
            return self.transformer.run(to_plain(record.old_image))
        except TransformOutputError as exc:
            # The same deterministic transform failed for this version everywhere, so it was
            # never written to D: there is nothing to remove.
            log.debug("old image of %s does not transform (%s)", record.keys, exc.reason)
            return []

    def _write(self, ops: list[Op], tombstone: bool) -> ApplyFailure | None:
        if not ops:
            return None
        results = list(self._pool.map(lambda op: self._one(op, tombstone), ops))
        failures = [(op.first_index, why) for op, why in zip(ops, results, strict=True) if why]
        if not failures:
            return None
        index, reason = min(failures)
        return ApplyFailure(index, reason, retryable=True)

    def _one(self, op: Op, tombstone: bool) -> str | None:
        """Run one write; the failure reason, or None when it is durably done."""
        try:
            if op.item is not None:
                outcome = self.writer.put_if_newer(op.item, op.seq)
            else:
                outcome = self.writer.remove(op.key, op.seq, tombstone=tombstone)
        except (ClientError, BotoCoreError) as exc:
            return f"destination write failed: {exc}"
        self.metrics.inc(_OUTCOME_METRIC[outcome])
        if op.orphan and outcome is not Outcome.STALE:
            self.metrics.inc("orphans_removed_total")
        return None
