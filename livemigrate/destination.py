"""Writes to the destination table, all through the version rule (ARCHITECTURE.md rules 1-3, 5).

- the backfill writes put-if-absent: losing the condition means a live write (or a tombstone)
  got there first, which is expected and counted as "superseded", never an error;
- a stream event writes only if its sequence number is newer than what the item holds;
- a REMOVE leaves a tombstone while the backfill runs, and deletes for real afterwards;
- tombstones are purged with a conditional delete that leaves a newer write alone.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from livemigrate.control import condition_failed
from livemigrate.items import TypedItem
from livemigrate.versioning import BACKFILL_SEQ, MIGRATION_ATTR, SEQ_ATTR, TOMBSTONE_ATTR

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
    """

    def __init__(
        self, client: DynamoDBClient, table: str, key_names: Sequence[str], migration_id: str
    ) -> None:
        self.client = client
        self.table = table
        self.key_names = tuple(key_names)
        self.migration_id = migration_id
        self._names = {"#k0": self.key_names[0], "#seq": SEQ_ATTR, "#tomb": TOMBSTONE_ATTR}
        # A put/delete from a stream event wins over anything older, and over items that
        # livemigrate did not write at all (no sequence attribute).
        self._newer = "attribute_not_exists(#k0) OR attribute_not_exists(#seq) OR #seq < :seq"

    def _stamp(self, item: Mapping[str, Any], seq: str) -> TypedItem:
        return {**item, SEQ_ATTR: {"S": seq}, MIGRATION_ATTR: {"S": self.migration_id}}

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
        return self._conditional("put", Outcome.APPLIED, Item=self._stamp(item, seq), seq=seq)

    def remove(self, key: TypedItem, seq: str, *, tombstone: bool) -> Outcome:
        """Stream delete: a tombstone while the backfill may still write (rule 2), else a delete."""
        if tombstone:
            marker = {**self._stamp(key, seq), TOMBSTONE_ATTR: {"BOOL": True}}
            return self._conditional("put", Outcome.TOMBSTONED, Item=marker, seq=seq)
        return self._conditional("delete", Outcome.DELETED, Key=dict(key), seq=seq)

    def purge_tombstone(self, key: TypedItem, seq: str) -> bool:
        """Delete a tombstone unless a newer write replaced it; True if it was deleted."""
        try:
            self.client.delete_item(
                TableName=self.table,
                Key=dict(key),
                ConditionExpression="#tomb = :true AND #seq = :seq",
                ExpressionAttributeNames={"#tomb": TOMBSTONE_ATTR, "#seq": SEQ_ATTR},
                ExpressionAttributeValues={":true": {"BOOL": True}, ":seq": {"S": seq}},
            )
        except ClientError as exc:
            if condition_failed(exc):
                return False
            raise
        return True

    def _conditional(self, op: str, success: Outcome, *, seq: str, **kwargs: Any) -> Outcome:
        common: dict[str, Any] = {
            "TableName": self.table,
            "ConditionExpression": self._newer,
            "ExpressionAttributeNames": {"#k0": self.key_names[0], "#seq": SEQ_ATTR},
            "ExpressionAttributeValues": {":seq": {"S": seq}},
        }
        try:
            if op == "put":
                self.client.put_item(**common, **kwargs)
            else:
                self.client.delete_item(**common, **kwargs)
        except ClientError as exc:
            if condition_failed(exc):
                return Outcome.STALE
            raise
        return success
