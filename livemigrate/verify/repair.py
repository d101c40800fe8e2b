"""``verify --repair``: fix confirmed differences only through the contract's version rules.

The rule, per kind of difference (ARCHITECTURE.md rules 1-3; a repair written from an older
read must never "un-synchronise" the table):

missing
    Re-read the source item with a consistent read, transform it, and write it with the
    backfill's put-if-absent (``_lm_seq`` = BACKFILL_SEQ). A live write or a tombstone that got
    there first wins; the repair is then counted as superseded.
different
    Only a copy the backfill wrote (held ``_lm_seq`` == BACKFILL_SEQ, not a tombstone) is
    replaced: it is deleted with a delete conditional on exactly that, then re-written as for
    a missing item. An item a stream event wrote (newer sequence number) is never overwritten:
    it is reported as ``skipped_stream_written`` (the consumer, not verify, owns it).
extra
    Deleted only when it is provably an orphan (issue 10 item 8): it records the source item it
    came from (``_lm_src``), and that item, read again (consistently), is absent or transforms
    to keys that do not include it. The delete is conditioned on the item being exactly the one
    read (owner and ``_lm_seq`` unchanged; marked first when the writer marks deletes), so a
    live write in between keeps it. Every other extra (no owner recorded, the owner's transform
    fails, or it maps there after all) is left alone and reported: deleting by scan result
    could race a live insert. The stream consumer deletes what the source deletes.
collision
    Never repaired: two live source items map to one key (rule 12); the data or the transform
    must change.

After a repair write lands, the source item is read again: if it was deleted (or no longer maps
to this key) in between, the stream consumer may already have applied that delete before our
write, so the repair deletes its own write again (conditional on BACKFILL_SEQ, so a newer live
write is left alone). A delete made after that second read reaches the destination through the
stream, whose sequence number beats BACKFILL_SEQ.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from livemigrate.destination import DestinationWriter, Outcome
from livemigrate.ownership import key_from_id
from livemigrate.verify.engine import Difference, Verifier
from livemigrate.versioning import BACKFILL_SEQ


class Repairer:
    """Callable handed to ``Verifier.run``: repairs one difference, returns the outcome name."""

    def __init__(self, verifier: Verifier, writer: DestinationWriter) -> None:
        self.verifier = verifier
        self.writer = writer

    def __call__(self, diff: Difference) -> str:
        if diff.kind == "extra" or diff.source_key is None:
            return self._extra(diff)
        if diff.kind == "different":
            if diff.held_seq != BACKFILL_SEQ:
                return "skipped_stream_written"
            if not self.delete_backfill_copy(diff.key):
                return "skipped_changed_meanwhile"
        return self._write(diff.source_key, diff.kid, diff.key)

    def _extra(self, diff: Difference) -> str:
        """Delete an extra item only if it is provably an orphan (see the module docstring)."""
        owner = diff.held_owner
        source_key = None if owner is None else key_from_id(owner)
        if owner is None or source_key is None or diff.held_seq is None:
            return "extra_left_alone"
        if self.verifier.maps_to(source_key, diff.kid) is not False:
            return "extra_left_alone"  # maps there after all, or cannot be proved
        if self.writer.delete_orphan(dict(diff.key), owner, diff.held_seq):
            return "orphan_removed"
        return "skipped_changed_meanwhile"

    def _write(self, source_key: Mapping[str, Any], kid: str, key: Mapping[str, Any]) -> str:
        expected = self.verifier.expected_for(source_key, kid)
        if expected is None:
            return "gone_from_source"
        if self.writer.put_if_absent(expected, source_key) is Outcome.SUPERSEDED:
            return "superseded_by_live_write"
        if self.verifier.expected_for(source_key, kid) is None:
            self.delete_backfill_copy(key)
            return "undone_source_deleted"
        return "repaired"

    def delete_backfill_copy(self, key: Mapping[str, Any]) -> bool:
        """Delete the item only if the backfill wrote it and nothing newer replaced it."""
        return self.writer.delete_backfill_copy(dict(key))
