"""Writes to the destination table, all through the version rule (ARCHITECTURE.md rules 1-3, 5).

- the backfill writes put-if-absent: losing the condition means a live write (or a tombstone)
  got there first, which is expected and counted as "superseded", never an error;
- a stream event writes only if its sequence number is newer than what the item holds;
- a REMOVE leaves a tombstone while the backfill runs, and deletes for real afterwards. With
  ``mark_deletes`` (a reverse consumer is configured) a delete is two writes: a conditional
  mark (``_lm_del`` with the event's sequence number), then a delete on that mark, so the
  delete's stream record says who made it (``livemigrate.replication``); without, one
  conditional delete (half the cost: ``make bench``, delete catch-up);
- tombstones are purged with a conditional delete that leaves a newer write alone;
- forward items record their source item (``_lm_src``, rule 12): a stream put or removal of
  source item u (``claim``, ``remove(owner=u)``) lands only on an absent key, a key u owns, or
  a key nobody owns yet (written before ownership existed), by the version rule; a key another
  item owns is refused with what it holds, so the applier can decide a handoff
  (``livemigrate.ownership``). Sequence numbers of different items are never compared.

The same writer, with the reverse marks (``_lm_rseq``, ``_lm_rdel``), writes the source table
for the reverse consumer after the cutover.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from livemigrate.control import condition_failed
from livemigrate.items import TypedItem
from livemigrate.ownership import owner_id
from livemigrate.replication import FORWARD, Marks
from livemigrate.versioning import BACKFILL_SEQ, MIGRATION_ATTR, TOMBSTONE_ATTR

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient


# The mark a consumer's delete leaves just before the delete itself (see remove).
_MARKED = "(#seq = :seq AND #del = :true)"
# A key source item :src may write: its own, or one nobody owns yet (rule 12).
_OWNED = "(attribute_not_exists(#src) OR #src = :src)"
_NEWER = "(attribute_not_exists(#seq) OR #seq < :seq)"


class Outcome(enum.Enum):
    WRITTEN = "written"  # backfill put landed
    SUPERSEDED = "superseded"  # backfill put lost to a live write or tombstone
    ALREADY_COPIED = "already_copied"  # backfill put found the backfill's own earlier copy
    APPLIED = "applied"  # stream write landed
    STALE = "stale"  # stream write skipped: the destination holds a newer or equal version
    TOMBSTONED = "tombstoned"
    DELETED = "deleted"
    OWNED_BY_OTHER = "owned_by_other"  # stream put refused: another source item owns the key
    CHANGED = "changed"  # handoff refused: the held item changed since it was read
    NOT_OWNER = "not_owner"  # removal skipped: another source item owns the key


@dataclass(frozen=True)
class Held:
    """What a refused write found at its key (``ReturnValuesOnConditionCheckFailure``)."""

    owner: str | None  # ``_lm_src``; None on items written before ownership existed
    seq: str | None
    removed: bool  # a tombstone, or marked for the consumer's delete


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

    def _stamp(self, item: Mapping[str, Any], seq: str, owner: str | None = None) -> TypedItem:
        stamped = {
            **item,
            self.marks.seq_attr: {"S": seq},
            MIGRATION_ATTR: {"S": self.migration_id},
        }
        if owner is not None and self.marks.owner_attr is not None:
            stamped[self.marks.owner_attr] = {"S": owner}
        return stamped

    def _owner(self, owner: str | None) -> str | None:
        """Ownership is the forward direction's: the reverse marks have no owner attribute."""
        return owner if self.marks.owner_attr is not None else None

    def key(self, item: Mapping[str, Any]) -> TypedItem:
        return {name: item[name] for name in self.key_names}

    def put_if_absent(
        self, item: TypedItem, source_key: Mapping[str, Any] | None = None
    ) -> Outcome:
        """Backfill write: only where nothing (not even a tombstone) is held (rule 1).

        ``source_key`` (the raw item's key) is recorded as the item's owner (rule 12).
        """
        owner = None if source_key is None else owner_id(source_key)
        refused = self._attempt(
            self.client.put_item,
            Item=self._stamp(item, BACKFILL_SEQ, owner),
            ConditionExpression="attribute_not_exists(#k0)",
            ExpressionAttributeNames={"#k0": self.key_names[0]},
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        )
        if refused is None:
            return Outcome.WRITTEN
        # A page read again (after a budget stop or a crash) finds the backfill's own copy: no
        # live write is involved, so it is not counted as one (issue 12, true counters).
        held = refused.get("Item") or {}
        own = held.get(self.marks.seq_attr, {}).get("S") == BACKFILL_SEQ
        if own and TOMBSTONE_ATTR not in held and self.marks.delete_attr not in held:
            return Outcome.ALREADY_COPIED
        return Outcome.SUPERSEDED

    def put_if_newer(self, item: TypedItem, seq: str) -> Outcome:
        """Stream write: lands only if ``seq`` is newer than the held version (rule 3)."""
        return self._if_newer(
            self.client.put_item, Outcome.APPLIED, Item=self._stamp(item, seq), seq=seq
        )

    def claim(
        self, item: TypedItem, seq: str, owner: str, replacing: Held | None = None
    ) -> tuple[Outcome, Held | None]:
        """Stream write of source item ``owner``'s output (rule 12), with what a refusal found.

        Lands on an absent key, or one ``owner`` owns (or nobody does) by the version rule:
        APPLIED; else STALE (``owner``'s own newer version) or OWNED_BY_OTHER. With
        ``replacing`` (a handoff the caller decided) it lands only if the key still holds
        exactly that item: APPLIED, else CHANGED.
        """
        names = {"#src": str(self.marks.owner_attr), "#seq": self.marks.seq_attr}
        if replacing is None:
            names["#k0"] = self.key_names[0]
            condition = f"attribute_not_exists(#k0) OR ({_OWNED} AND {_NEWER})"
            values = {":src": {"S": owner}, ":seq": {"S": seq}}
        else:
            condition, values = _unchanged(replacing)
        refused = self._attempt(
            self.client.put_item,
            Item=self._stamp(item, seq, owner),
            ConditionExpression=condition,
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        )
        if refused is None:
            return Outcome.APPLIED, None
        held = self._held(refused)
        if replacing is not None:
            return Outcome.CHANGED, held
        if held is None or held.owner in (None, owner):
            return Outcome.STALE, held
        return Outcome.OWNED_BY_OTHER, held

    def remove(
        self,
        key: TypedItem,
        seq: str,
        *,
        tombstone: bool,
        owner: str | None = None,
        mark: bool | None = None,
    ) -> Outcome:
        """Stream delete: a tombstone while the backfill may still write (rule 2), else a delete,
        marked first when ``mark`` (default: ``mark_deletes``) says so.

        With ``owner`` (the source item whose old image mapped here) a key another source item
        owns is left alone: NOT_OWNER (rule 12). A tombstone records ``owner`` too.
        """
        owner = self._owner(owner)
        if tombstone:
            marker = {**self._stamp(key, seq, owner), TOMBSTONE_ATTR: {"BOOL": True}}
            return self._if_newer(
                self.client.put_item, Outcome.TOMBSTONED, Item=marker, seq=seq, owner=owner
            )
        if not (self.mark_deletes if mark is None else mark):
            return self._if_newer(
                self.client.delete_item, Outcome.DELETED, Key=dict(key), seq=seq, owner=owner
            )
        return self._marked_delete(key, seq, owner=owner)

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
        *,
        owner: str | None = None,
    ) -> Outcome:
        """Stamp ``seq`` and the delete mark on a held, older item, then delete it on that mark,
        so its stream record says who deleted it (``livemigrate.replication``)."""
        # Equal and already marked passes too: a replay after a crash between mark and delete.
        condition = (
            f"attribute_exists(#k0) AND (attribute_not_exists(#seq) OR #seq < :seq OR {_MARKED})"
        )
        names = {"#seq": self.marks.seq_attr, "#del": self.marks.delete_attr}
        values = {":seq": {"S": seq}, ":true": {"BOOL": True}}
        if also:
            condition += f" AND ({also})"
        extra_names: dict[str, str] = {}
        extra_values: dict[str, Any] = dict(also_values or {})
        if owner is not None:
            condition += f" AND {_OWNED}"
            extra_names["#src"] = str(self.marks.owner_attr)
            extra_values[":src"] = {"S": owner}
        refused = self._attempt(
            self.client.update_item,
            Key=dict(key),
            UpdateExpression="SET #seq = :seq, #del = :true, #mid = :mid",
            ConditionExpression=condition,
            ExpressionAttributeNames={
                **names,
                "#k0": self.key_names[0],
                "#mid": MIGRATION_ATTR,
                **extra_names,
            },
            ExpressionAttributeValues={**values, ":mid": {"S": self.migration_id}, **extra_values},
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        )
        if refused is not None:
            # Nothing held: the delete has nothing to do. Held and newer (or another source
            # item's): this event is stale (or not this item's to remove).
            return self._refused_removal(refused, owner) if "Item" in refused else Outcome.DELETED
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
        return self._delete_if(key, condition, names, values)

    def delete_orphan(self, key: TypedItem, owner: str, seq: str) -> bool:
        """Delete an item ``verify --repair`` proved an orphan, only if it is still exactly the
        one read (owner ``owner`` at ``seq``, not a tombstone); True if it was deleted."""
        names = {
            "#seq": self.marks.seq_attr,
            "#tomb": TOMBSTONE_ATTR,
            "#src": str(self.marks.owner_attr),
        }
        values: dict[str, Any] = {":held": {"S": seq}, ":src": {"S": owner}}
        condition = "#src = :src AND #seq = :held AND attribute_not_exists(#tomb)"
        return self._delete_if(key, condition, names, values)

    def _delete_if(
        self, key: TypedItem, condition: str, names: dict[str, str], values: dict[str, Any]
    ) -> bool:
        """A conditional delete, marked first when a reverse consumer may be reading."""
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
        self,
        call: Callable[..., Any],
        success: Outcome,
        *,
        seq: str,
        owner: str | None = None,
        **kwargs: Any,
    ) -> Outcome:
        """A put or delete that lands only if ``seq`` is newer than the held version (and,
        with ``owner``, only on a key that source item owns or nobody does)."""
        names = {"#k0": self.key_names[0], "#seq": self.marks.seq_attr}
        values = {":seq": {"S": seq}}
        if owner is None:
            refused = self._attempt(
                call,
                ConditionExpression=self._newer,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                **kwargs,
            )
            return success if refused is None else Outcome.STALE
        refused = self._attempt(
            call,
            ConditionExpression=f"attribute_not_exists(#k0) OR ({_OWNED} AND {_NEWER})",
            ExpressionAttributeNames={**names, "#src": str(self.marks.owner_attr)},
            ExpressionAttributeValues={**values, ":src": {"S": owner}},
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
            **kwargs,
        )
        return success if refused is None else self._refused_removal(refused, owner)

    def _refused_removal(self, refused: Mapping[str, Any], owner: str | None) -> Outcome:
        held = self._held(refused)
        if owner is not None and held is not None and held.owner not in (None, owner):
            return Outcome.NOT_OWNER
        return Outcome.STALE

    def _held(self, refused: Mapping[str, Any]) -> Held | None:
        """The held item a refusal returned (None: nothing is held)."""
        item = refused.get("Item")
        if not item:
            return None

        def text(name: str | None) -> str | None:
            value = item.get(name, {}) if name else {}
            return str(value["S"]) if "S" in value else None

        removed = any(
            item.get(name, {}).get("BOOL") is True
            for name in (self.marks.tombstone_attr, self.marks.delete_attr)
            if name
        )
        return Held(text(self.marks.owner_attr), text(self.marks.seq_attr), removed)

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


def _unchanged(held: Held) -> tuple[str, dict[str, Any]]:
    """A condition that the key still holds exactly ``held`` (its owner and stamp)."""
    values: dict[str, Any] = {":hsrc": {"S": held.owner}}
    if held.seq is None:
        return "#src = :hsrc AND attribute_not_exists(#seq)", values
    values[":hseq"] = {"S": held.seq}
    return "#src = :hsrc AND #seq = :hseq", values
