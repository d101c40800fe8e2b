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
        try:
            self.client.put_item(
                TableName=self.table,
                Item=self._stamp(item, BACKFILL_SEQ),
                ConditionExpression="attribute_not_exists(#k0)",
                ExpressionAttributeNames={"#k0": self.key_names[0]},
            )
        except ClientError as exc:
            if condition_failed(exc):
                return Outcome.SUPERSEDED
            raise
        return Outcome.WRITTEN

    def put_if_newer(self, item: TypedItem, seq: str) -> Outcome:
        """Stream write: lands only if ``seq`` is newer than the held version (rule 3)."""
        return self._conditional(
            self.client.put_item, Outcome.APPLIED, Item=self._stamp(item, seq), seq=seq
        )

    def remove(self, key: TypedItem, seq: str, *, tombstone: bool) -> Outcome:
        """Stream delete: a tombstone while the backfill may still write (rule 2), else a delete."""
        if tombstone:
            marker = {**self._stamp(key, seq), TOMBSTONE_ATTR: {"BOOL": True}}
            return self._conditional(self.client.put_item, Outcome.TOMBSTONED, Item=marker, seq=seq)
        if not self.mark_deletes:
            return self._conditional(
                self.client.delete_item, Outcome.DELETED, Key=dict(key), seq=seq
            )
        refused = self._mark_deleted(key, seq)
        return refused if refused is not None else self._delete_marked(key, seq)

    def _delete_marked(self, key: TypedItem, seq: str) -> Outcome:
        try:
            self.client.delete_item(
                TableName=self.table,
                Key=dict(key),
                ConditionExpression="#seq = :seq AND #del = :true",
                ExpressionAttributeNames={
                    "#seq": self.marks.seq_attr,
                    "#del": self.marks.delete_attr,
                },
                ExpressionAttributeValues={":seq": {"S": seq}, ":true": {"BOOL": True}},
            )
        except ClientError as exc:
            if condition_failed(exc):
                return Outcome.STALE  # a newer write replaced the marked item meanwhile
            raise
        return Outcome.DELETED

    def remove_unchanged(self, key: TypedItem, seq: str, held: str | None) -> Outcome:
        """A marked delete that also requires the item's stamp to be ``held`` (None: no stamp),
        as read by the caller: a write in between (from another record) keeps the item."""
        refused = self._mark_deleted(key, seq, held=held, check_held=True)
        return refused if refused is not None else self._delete_marked(key, seq)

    def _mark_deleted(
        self, key: TypedItem, seq: str, *, held: str | None = None, check_held: bool = False
    ) -> Outcome | None:
        """Stamp ``seq`` and the delete mark on a held, older item; None once it is marked."""
        # Equal and already marked passes too: a replay after a crash between mark and delete.
        newer = "attribute_not_exists(#seq) OR #seq < :seq OR (#seq = :seq AND #del = :true)"
        condition = f"attribute_exists(#k0) AND ({newer})"
        values: dict[str, Any] = {
            ":seq": {"S": seq},
            ":true": {"BOOL": True},
            ":mid": {"S": self.migration_id},
        }
        if check_held and held is None:
            condition += " AND (attribute_not_exists(#seq) OR (#seq = :seq AND #del = :true))"
        elif check_held:
            condition += " AND (#seq = :held OR (#seq = :seq AND #del = :true))"
            values[":held"] = {"S": held}
        try:
            self.client.update_item(
                TableName=self.table,
                Key=dict(key),
                UpdateExpression="SET #seq = :seq, #del = :true, #mid = :mid",
                ConditionExpression=condition,
                ExpressionAttributeNames={
                    "#k0": self.key_names[0],
                    "#seq": self.marks.seq_attr,
                    "#del": self.marks.delete_attr,
                    "#mid": MIGRATION_ATTR,
                },
                ExpressionAttributeValues=values,
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if not condition_failed(exc):
                raise
            # Nothing held: the delete has nothing to do. Held and newer: this event is stale.
            return Outcome.STALE if "Item" in exc.response else Outcome.DELETED
        return None

    def delete_backfill_copy(self, key: TypedItem) -> bool:
        """Delete an item only if the backfill wrote it and nothing newer replaced it (verify
        --repair); marked first, like every delete, when a reverse consumer may be reading."""
        names = {"#seq": self.marks.seq_attr, "#tomb": TOMBSTONE_ATTR}
        values: dict[str, Any] = {":backfill": {"S": BACKFILL_SEQ}}
        condition = "#seq = :backfill AND attribute_not_exists(#tomb)"
        try:
            if self.mark_deletes:
                self.client.update_item(
                    TableName=self.table,
                    Key=dict(key),
                    UpdateExpression="SET #del = :true",
                    ConditionExpression=condition,
                    ExpressionAttributeNames={**names, "#del": self.marks.delete_attr},
                    ExpressionAttributeValues={**values, ":true": {"BOOL": True}},
                )
            self.client.delete_item(
                TableName=self.table,
                Key=dict(key),
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
        except ClientError as exc:
            if condition_failed(exc):
                return False
            raise
        return True

    def purge_tombstone(self, key: TypedItem, seq: str) -> bool:
        """Delete a tombstone unless a newer write replaced it; True if it was deleted."""
        try:
            self.client.delete_item(
                TableName=self.table,
                Key=dict(key),
                ConditionExpression="#tomb = :true AND #seq = :seq",
                ExpressionAttributeNames={"#tomb": TOMBSTONE_ATTR, "#seq": self.marks.seq_attr},
                ExpressionAttributeValues={":true": {"BOOL": True}, ":seq": {"S": seq}},
            )
        except ClientError as exc:
            if condition_failed(exc):
                return False
            raise
        return True

    def _conditional(
        self, call: Callable[..., Any], success: Outcome, *, seq: str, **kwargs: Any
    ) -> Outcome:
        """A put or delete that lands only if ``seq`` is newer than the held version."""
        try:
            call(
                TableName=self.table,
                ConditionExpression=self._newer,
                ExpressionAttributeNames={"#k0": self.key_names[0], "#seq": self.marks.seq_attr},
                ExpressionAttributeValues={":seq": {"S": seq}},
                **kwargs,
            )
        except ClientError as exc:
            if condition_failed(exc):
                return Outcome.STALE
            raise
        return success
