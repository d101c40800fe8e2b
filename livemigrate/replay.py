"""Replaying dead letters through the current transform and the same version rule.

- A **stream** letter is the record itself: it is parsed back (``StreamRecord``) and handed to
  the destination applier (injected: ``stream_consumer.applier.DestinationApplier``), so its
  puts land only if newer than what the destination holds and its removals only over older
  versions. A replay of a stale record changes nothing.
- A **backfill** letter is replayed from what the source holds *now*, read consistently: the
  stored copy may be older than the source, and the item may have been deleted since. Writing the
  stored copy put-if-absent would resurrect a deleted item once the consumer deletes for real
  (no tombstone is left). So: source item gone -> nothing to write; present -> transform it and
  put-if-absent (a newer stream write or a tombstone wins, rule 1); then the source is read once
  more and a copy the source no longer maps to (deleted or moved meanwhile, its stream record
  possibly applied between our read and our write) is deleted again with the same guard
  ``verify --repair`` uses (only a backfill copy nothing newer replaced).
- A letter is **resolved** when its replay succeeded, or when the item is since in the
  destination at a newer version (``check``): for a stream letter, every destination key of the
  record's new image holds a version at least as new; for a backfill letter, every key is held
  (any holder is at least as new as the backfill).

Search letters are not replayed here (``livemigrate search resync`` rebuilds documents).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from livemigrate.deadletters import DeadLetter, DeadLetters
from livemigrate.destination import Outcome
from livemigrate.errors import TransformOutputError
from livemigrate.items import TypedItem, key_id, to_plain
from livemigrate.records import ApplyFailure, StreamRecord
from livemigrate.versioning import BACKFILL_SEQ, SEQ_ATTR, TOMBSTONE_ATTR

if TYPE_CHECKING:
    from livemigrate.migration import Migration

# Applies one record through the version rule; says what it did ("applied 1, stale 0").
ApplyRecord = Callable[[StreamRecord], str]
REPLAYABLE = ("backfill", "stream")


@dataclass(frozen=True)
class ReplayResult:
    """What one replay did: ``resolved`` with why, or the error that keeps the letter open."""

    letter_id: str
    resolved: bool
    detail: str


class Replayer:
    """Replays and checks dead letters of one migration.

    Parameters
    ----------
    migration:
        The open migration (current transform, destination writer, source table).
    letters:
        Its dead-letter store.
    apply_record:
        Applies one stream record through the version rule (the consumer's applier); raises
        ``ApplyFailure``.
    """

    def __init__(
        self, migration: Migration, letters: DeadLetters, apply_record: ApplyRecord
    ) -> None:
        self.migration = migration
        self.letters = letters
        self.apply_record = apply_record
        self.dynamodb = migration.clients.dynamodb

    # -- replay ----------------------------------------------------------------------------
    def replay(self, letter: DeadLetter) -> ReplayResult:
        """Replay one letter; records the outcome on it (resolved, or the last error)."""
        try:
            detail = self._replay(letter)
        except (TransformOutputError, ApplyFailure, _NotReplayable) as exc:
            self.letters.replay_failed(letter.id, exc.reason)
            return ReplayResult(letter.id, False, exc.reason)
        self.letters.resolve(letter.id, detail)
        return ReplayResult(letter.id, True, detail)

    def _replay(self, letter: DeadLetter) -> str:
        if letter.origin not in REPLAYABLE:
            raise _NotReplayable(
                f"{letter.origin} letters are not replayed here "
                "(search: run `livemigrate search resync`, then ack it)"
            )
        if letter.raw_truncated or letter.kind == "json":
            if letter.origin == "backfill" and letter.typed_key is not None:
                return self._replay_item(letter.typed_key)
            raise _NotReplayable("its input was not kept exactly (truncated or an old letter)")
        if letter.kind == "record":
            return self._replay_record(letter)
        if letter.typed_key is None:
            raise _NotReplayable("its source key was not kept")
        return self._replay_item(letter.typed_key)

    def _replay_record(self, letter: DeadLetter) -> str:
        raw = letter.record()
        record = StreamRecord.from_boto(raw, str(raw.get("shard_id", "")))
        done = self.apply_record(record)
        return f"replayed stream record {record.sequence_number.lstrip('0')}: {done}"

    def _replay_item(self, source_key: TypedItem) -> str:
        current = self._source_item(source_key)
        if current is None:
            return "source item no longer exists: nothing to replay"
        outputs = self.migration.transformer.run(to_plain(current))
        writer = self.migration.writer
        written = [out for out in outputs if writer.put_if_absent(out) is Outcome.WRITTEN]
        undone = self._undo_moved(source_key, written)
        return (
            f"replayed from the source: {len(written) - undone} written, "
            f"{len(outputs) - len(written)} already newer in the destination"
            + (f", {undone} removed again (source changed meanwhile)" if undone else "")
        )

    def _undo_moved(self, source_key: TypedItem, written: list[TypedItem]) -> int:
        if not written:
            return 0
        now = self._source_item(source_key)
        try:
            outputs = self.migration.transformer.run(to_plain(now)) if now is not None else []
        except TransformOutputError:
            outputs = []  # the source's current version is a dead letter of its own
        writer = self.migration.writer
        keep = {key_id(writer.key(out)) for out in outputs}
        gone = [writer.key(out) for out in written if key_id(writer.key(out)) not in keep]
        return sum(1 for key in gone if writer.delete_backfill_copy(key))

    def _source_item(self, key: TypedItem) -> dict[str, Any] | None:
        resp = self.dynamodb.get_item(
            TableName=self.migration.settings.source_table, Key=dict(key), ConsistentRead=True
        )
        item = resp.get("Item")
        return None if item is None else dict(item)

    # -- automatic resolution --------------------------------------------------------------
    def check(self, letter: DeadLetter) -> str | None:
        """Why an unresolved letter no longer needs a replay (a newer version is in the
        destination), or None. Marks it resolved when so."""
        if not letter.unresolved or letter.origin not in REPLAYABLE or letter.kind == "json":
            return None
        try:
            why = self._superseded(letter)
        except TransformOutputError:
            return None  # the transform still fails on it: a replay is still needed
        if why is not None:
            self.letters.resolve(letter.id, why)
        return why

    def _superseded(self, letter: DeadLetter) -> str | None:
        if letter.kind == "record":
            raw = letter.record()
            image = raw["dynamodb"].get("NewImage")
            version = StreamRecord.from_boto(raw).sequence_number
        else:
            image, version = letter.typed_item(), BACKFILL_SEQ
        if image is None:
            return None
        outputs = self.migration.transformer.run(to_plain(image))
        held = [self._held(self.migration.writer.key(out)) for out in outputs]
        if not held or not all(_as_new(h, version) for h in held):
            return None
        seqs = sorted(str(h[SEQ_ATTR]["S"]).lstrip("0") or "0" for h in held if h)
        return f"a version at least as new is in the destination (seq {', '.join(seqs)})"

    def _held(self, key: TypedItem) -> dict[str, Any] | None:
        resp = self.dynamodb.get_item(
            TableName=self.migration.settings.destination_table,
            Key=dict(key),
            ConsistentRead=True,
        )
        item = resp.get("Item")
        return None if item is None else dict(item)


def _as_new(held: dict[str, Any] | None, version: str) -> bool:
    """The held item is the letter's version or newer (a tombstone only if strictly newer)."""
    if held is None or SEQ_ATTR not in held:
        return False
    seq = str(held[SEQ_ATTR]["S"])
    if TOMBSTONE_ATTR in held:
        return seq > version
    return seq >= version


class _NotReplayable(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)
