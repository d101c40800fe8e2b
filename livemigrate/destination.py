"""Writes to the destination table, all through the version rule (ARCHITECTURE.md rules 1-3, 5).

- the backfill writes put-if-absent: losing the condition means a live write (or a tombstone)
  got there first, which is expected and counted as "superseded", never an error;
- a stream event writes only if its sequence number is newer than what the item holds;
- a REMOVE leaves a tombstone while the backfill runs, and deletes for real afterwards. With
  ``mark_deletes`` (a reverse consumer is configured) a delete is two writes: a conditional
  mark (``_lm_del`` with the event's sequence number), then a delete on that mark, so the
  delete's stream record says who made it (``livemigrate.replication``); without, one
  conditional delete (half the cost: ``make bench``, delete catch-up);
- tombstones are purged with a conditional delete that leaves a newer write alone.

The same writer, with the reverse marks (``_lm_rseq``, ``_lm_rdel``), writes the source table
for the reverse consumer after the cutover.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from livemigrate.control import condition_failed
from livemigrate.items import TypedItem
from livemigrate.replication import FORWARD, Marks
from livemigrate.versioning import BACKFILL_SEQ, MIGRATION_ATTR, TOMBSTONE_ATTR

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient


# The mark a consumer's delete leaves just before the delete itself (see remove).
_MARKED = "(#seq = :seq AND #del = :true)"


class Outcome(enum.Enum):
    WRITTEN = "written"  # backfill put landed
    SUPERSEDED = "superseded"  # backfill put lost to a live write or tombstone
    APPLIED = "applied"  # stream write landed
    STALE = "stale"  # stream write skipped: the destination holds a newer or equal version
    TOMBSTONED = "tombstoned"
    DELETED = "deleted"


class DestinationWriter:
    """All writes into one destination table for one migration.

    Parameters
    ----------
    client:
        DynamoDB client (injected).
    table:
        Destination table name.
    key_names:
        The destination's key attribute names (hash first).
    migration_id:
        Stored on every item, so a second migration on the same table is detectable.
    marks:
        The attributes this direction stamps (forward by default; the reverse consumer's
        writer uses ``replication.REVERSE``).
    mark_deletes:
        Mark an item before deleting it (needed as soon as a consumer reads this table's
        stream in the other direction).
    """

    def __init__(
        self,
        client: DynamoDBClient,
        table: str,
        key_names: Sequence[str],
        migration_id: str,
        marks: Marks = FORWARD,
        *,
        mark_deletes: bool = True,
    ) -> None:
        self.client = client
        self.table = table
        self.key_names = tuple(key_names)
        self.migration_id = migration_id
        self.marks = marks
        self.mark_deletes = mark_deletes
        # A put/delete from a stream event wins over anything older, and over items that
        # livemigrate did not write at all (no sequence attribute).
        self._newer = "attribute_not_exists(#k0) OR attribute_not_exists(#seq) OR #seq < :seq"

    def _stamp(self, item: Mapping[str, Any], seq: str) -> TypedItem:
        return {**item, self.marks.seq_attr: {"S": seq}, MIGRATION_ATTR: {"S": self.migration_id}}

    def key(self, item: Mapping[str, Any]) -> TypedItem:
        return {name: item[name] for name in self.key_names}

    def put_if_absent(self, item: TypedItem) -> Outcome:
        """Backfill write: only where nothing (not even a tombstone) is held (rule 1)."""
        refused = self._attempt(
            self.client.put_item,
            Item=self._stamp(item, BACKFILL_SEQ),
            ConditionExpression="attribute_not_exists(#k0)",
            ExpressionAttributeNames={"#k0": self.key_names[0]},
        )
        return Outcome.WRITTEN if refused is None else Outcome.SUPERSEDED

    def put_if_newer(self, item: TypedItem, seq: str) -> Outcome:
        """Stream write: lands only if ``seq`` is newer than the held version (rule 3)."""
        return self._if_newer(
            self.client.put_item, Outcome.APPLIED, Item=self._stamp(item, seq), seq=seq
        )

    def remove(
        self, key: TypedItem, seq: str, *, tombstone: bool, mark: bool | None = None
    ) -> Outcome:
        """Stream delete: a tombstone while the backfill may still write (rule 2), else a delete,
        marked first when ``mark`` (default: ``mark_deletes``) says so."""
        if tombstone:
            marker = {**self._stamp(key, seq), TOMBSTONE_ATTR: {"BOOL": True}}
            return self._if_newer(self.client.put_item, Outcome.TOMBSTONED, Item=marker, seq=seq)
        if not (self.mark_deletes if mark is None else mark):
            return self._if_newer(self.client.delete_item, Outcome.DELETED, Key=dict(key), seq=seq)
        return self._marked_delete(key, seq)

    def remove_unchanged(self, key: TypedItem, seq: str, held: str | None) -> Outcome:
        """A marked delete that also requires the item's stamp to be ``held`` (None: no stamp),
        as read by the caller: a write in between (from another record) keeps the item."""
        # An item this very delete already marked (a replay) passes as well.
        if held is None:
            return self._marked_delete(key, seq, "attribute_not_exists(#seq) OR " + _MARKED)
        return self._marked_delete(key, seq, "#seq = :held OR " + _MARKED, {":held": {"S": held}})

    def _marked_delete(
        self,
        key: TypedItem,
        seq: str,
        also: str = "",
        also_values: Mapping[str, Any] | None = None,
    ) -> Outcome:
        """Stamp ``seq`` and the delete mark on a held, older item, then delete it on that mark,
        so its stream record says who deleted it (``livemigrate.replication``)."""
        # Equal and already marked passes too: a replay after a crash between mark and delete.
        condition = (
            f"attribute_exists(#k0) AND (attribute_not_exists(#seq) OR #seq < :seq OR {_MARKED})"
        )
        names = {"#seq": self.marks.seq_attr, "#del": self.marks.delete_attr}
        values = {":seq": {"S": seq}, ":true": {"BOOL": True}}
        refused = self._attempt(
            self.client.update_item,
            Key=dict(key),
            UpdateExpression="SET #seq = :seq, #del = :true, #mid = :mid",
            ConditionExpression=condition + (f" AND ({also})" if also else ""),
            ExpressionAttributeNames={**names, "#k0": self.key_names[0], "#mid": MIGRATION_ATTR},
            ExpressionAttributeValues={
                **values,
                ":mid": {"S": self.migration_id},
                **(also_values or {}),
            },
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        )
        if refused is not None:
            # Nothing held: the delete has nothing to do. Held and newer: this event is stale.
            return Outcome.STALE if "Item" in refused else Outcome.DELETED
        refused = self._attempt(
            self.client.delete_item,
            Key=dict(key),
            ConditionExpression=_MARKED,
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
        )
        # Refused: a newer write replaced the marked item meanwhile.
        return Outcome.DELETED if refused is None else Outcome.STALE

    def delete_backfill_copy(self, key: TypedItem) -> bool:
        """Delete an item only if the backfill wrote it and nothing newer replaced it (verify
        --repair); marked first, like every delete, when a reverse consumer may be reading."""
        names = {"#seq": self.marks.seq_attr, "#tomb": TOMBSTONE_ATTR}
        values: dict[str, Any] = {":backfill": {"S": BACKFILL_SEQ}}
        condition = "#seq = :backfill AND attribute_not_exists(#tomb)"
        if self.mark_deletes:
            refused = self._attempt(
                self.client.update_item,
                Key=dict(key),
                UpdateExpression="SET #del = :true",
                ConditionExpression=condition,
                ExpressionAttributeNames={**names, "#del": self.marks.delete_attr},
                ExpressionAttributeValues={**values, ":true": {"BOOL": True}},
            )
            if refused is not None:
                return False
        refused = self._attempt(
            self.client.delete_item,
            Key=dict(key),
            ConditionExpression=condition,
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
        )
        return refused is None

    def purge_tombstone(self, key: TypedItem, seq: str) -> bool:
        """Delete a tombstone unless a newer write replaced it; True if it was deleted."""
        refused = self._attempt(
            self.client.delete_item,
            Key=dict(key),
            ConditionExpression="#tomb = :true AND #seq = :seq",
            ExpressionAttributeNames={"#tomb": TOMBSTONE_ATTR, "#seq": self.marks.seq_attr},
            ExpressionAttributeValues={":true": {"BOOL": True}, ":seq": {"S": seq}},
        )
        return refused is None

    def _if_newer(
        self, call: Callable[..., Any], success: Outcome, *, seq: str, **kwargs: Any
    ) -> Outcome:
        """A put or delete that lands only if ``seq`` is newer than the held version."""
        refused = self._attempt(
            call,
            ConditionExpression=self._newer,
            ExpressionAttributeNames={"#k0": self.key_names[0], "#seq": self.marks.seq_attr},
            ExpressionAttributeValues={":seq": {"S": seq}},
            **kwargs,
        )
        return success if refused is None else Outcome.STALE

    def _attempt(self, call: Callable[..., Any], **kwargs: Any) -> dict[str, Any] | None:
        """One conditional write on this table: None when it landed, else the refusal's
        response (with the held item when ``ReturnValuesOnConditionCheckFailure`` asked).
        Any other error is raised."""
        try:
            call(TableName=self.table, **kwargs)
        except ClientError as exc:
            if condition_failed(exc):
                return dict(exc.response)
            raise
        return None
