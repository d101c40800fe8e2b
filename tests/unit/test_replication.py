"""Echo detection between the two replication directions (``livemigrate.replication``).

The examples pin each clause of the module's contract for both marks. The hypothesis test
produces the consumer-side stream records with the REAL ``DestinationWriter`` against an
in-memory table that emits a stream record per change, interleaved with application writes,
and checks the contract: every record a consumer's writer makes is an echo of that consumer,
no application write is an echo of either consumer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from livemigrate.destination import DestinationWriter
from livemigrate.items import TypedItem, key_id, to_typed
from livemigrate.records import EventName, StreamRecord
from livemigrate.replication import FORWARD, REVERSE, Marks, written_by
from livemigrate.versioning import MIGRATION_ATTR, RESERVED_PREFIX, TOMBSTONE_ATTR, pad_seq

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

BOTH = pytest.mark.parametrize(("marks", "other"), [(FORWARD, REVERSE), (REVERSE, FORWARD)])
KEY = {"pk": "k"}


def stamp(marks: Marks, n: int) -> dict[str, Any]:
    """The sequence attribute a consumer with ``marks`` writes at stream position ``n``."""
    return {marks.seq_attr: pad_seq(str(n)), MIGRATION_ATTR: "m1"}


def marked(marks: Marks, n: int) -> dict[str, Any]:
    """An item stamped and marked for the consumer's delete (the first step of ``remove``)."""
    return {**stamp(marks, n), marks.delete_attr: True}


def change(old: dict[str, Any] | None, new: dict[str, Any] | None) -> StreamRecord:
    """A stream record of ``old`` -> ``new`` (plain images, keyed by ``KEY``)."""
    name: EventName = "REMOVE" if new is None else ("MODIFY" if old else "INSERT")
    return StreamRecord(
        event_name=name,
        keys=to_typed(KEY),
        new_image=None if new is None else to_typed({**KEY, **new}),
        old_image=None if old is None else to_typed({**KEY, **old}),
        sequence_number=pad_seq("1"),
        approximate_creation=0.0,
    )


# -- examples: consumer writes are echoes -------------------------------------------------------
@BOTH
def test_consumer_put_over_absent_unstamped_or_older_item_is_an_echo(
    marks: Marks, other: Marks
) -> None:
    written = {"v": "new", **stamp(marks, 5)}
    over_absent = change(None, written)
    over_app_item = change({"v": "app"}, written)
    over_older = change({"v": "old", **stamp(marks, 3)}, written)
    for record in (over_absent, over_app_item, over_older):
        assert written_by(marks, record)
        assert not written_by(other, record)


@BOTH
def test_delete_mark_and_the_remove_on_it_are_echoes(marks: Marks, other: Marks) -> None:
    held = {"v": "x", **stamp(marks, 3)}
    mark = change(held, {"v": "x", **marked(marks, 5)})
    delete = change({"v": "x", **marked(marks, 5)}, None)
    assert written_by(marks, mark) and written_by(marks, delete)
    assert not written_by(other, mark) and not written_by(other, delete)


# -- examples: application writes are not ---------------------------------------------------------
@BOTH
def test_application_put_of_a_fresh_item_is_not_an_echo(marks: Marks, other: Marks) -> None:
    assert not written_by(marks, change(None, {"v": "app"}))
    # a put replacing a stamped item drops the stamp: still the application's
    assert not written_by(marks, change({"v": "x", **stamp(marks, 9)}, {"v": "app"}))


@BOTH
def test_application_update_keeping_the_stamp_is_not_an_echo(marks: Marks, other: Marks) -> None:
    record = change({"v": 1, **stamp(marks, 5)}, {"v": 2, **stamp(marks, 5)})
    assert not written_by(marks, record)
    assert not written_by(other, record)


@BOTH
def test_read_modify_write_of_an_older_version_is_not_an_echo(marks: Marks, other: Marks) -> None:
    # the application read the item at stamp 5; meanwhile the consumer wrote stamp 7
    record = change({"v": "c", **stamp(marks, 7)}, {"v": "app", **stamp(marks, 5)})
    assert not written_by(marks, record)


@BOTH
def test_application_delete_of_an_unmarked_item_is_not_an_echo(marks: Marks, other: Marks) -> None:
    assert not written_by(marks, change({"v": "x", **stamp(marks, 5)}, None))
    assert not written_by(marks, change({"v": "x"}, None))


# -- examples: tombstones are forward-only; the other direction's marks never count ----------------
def test_forward_tombstone_and_its_purge_are_forward_echoes_only() -> None:
    tomb = {**stamp(FORWARD, 5), TOMBSTONE_ATTR: True}
    put = change({"v": "x", **stamp(FORWARD, 3)}, tomb)
    purge = change(tomb, None)
    assert written_by(FORWARD, put) and written_by(FORWARD, purge)
    assert not written_by(REVERSE, put) and not written_by(REVERSE, purge)
    # a tombstone is recognised by its flag alone, even with the stamp unchanged (a replay)
    assert written_by(FORWARD, change(tomb, {**tomb}))


@BOTH
def test_other_directions_stamps_and_marks_never_count(marks: Marks, other: Marks) -> None:
    # `other` stamps a newer version over an item carrying `marks`' stamp: `other`'s write only
    both_old = {"v": 1, **stamp(marks, 5), **stamp(other, 3)}
    both_new = {"v": 2, **stamp(marks, 5), **stamp(other, 8)}
    assert written_by(other, change(both_old, both_new))
    assert not written_by(marks, change(both_old, both_new))
    assert not written_by(marks, change(None, {"v": 1, **stamp(other, 8)}))
    assert not written_by(marks, change({"v": 1, **marked(other, 8)}, None))


def test_marks_are_distinct_attributes() -> None:
    names = [FORWARD.seq_attr, FORWARD.delete_attr, REVERSE.seq_attr, REVERSE.delete_attr]
    assert len(set(names)) == 4
    assert all(n.startswith(RESERVED_PREFIX) for n in names)
    assert REVERSE.tombstone_attr is None  # only the forward consumer writes tombstones


@pytest.mark.xfail(
    reason="KNOWN GAP: an application put that copies a stamped item it read (to a new key, or "
    "back after a delete) carries the stamp onto an item holding none and is taken for an echo, "
    "so the other consumer skips it (livemigrate/replication.py written_by)",
    strict=True,
)
@BOTH
def test_application_copy_of_a_stamped_item_is_not_an_echo(marks: Marks, other: Marks) -> None:
    read = {"v": "x", **stamp(marks, 5)}  # get_item of a consumer-written item
    assert not written_by(marks, change(None, {**read, "v": "copy"}))


# -- property: the real writer against an in-memory table with a stream -------------------------
class StreamedTable:
    """Just enough of a DynamoDB client for ``DestinationWriter`` (conditions NOT evaluated).

    Every change appends a ``StreamRecord`` (NEW_AND_OLD_IMAGES); a write that changes nothing
    appends none, as DynamoDB Streams does.
    """

    _set_clause = re.compile(r"^\s*(#\w+)\s*=\s*(:\w+)\s*$")

    def __init__(self, key_names: tuple[str, ...]) -> None:
        self.key_names = key_names
        self.items: dict[str, TypedItem] = {}
        self.records: list[StreamRecord] = []

    def _id(self, item: TypedItem) -> str:
        return key_id({name: item[name] for name in self.key_names})

    def _changed(self, key: TypedItem, old: TypedItem | None, new: TypedItem | None) -> None:
        if old == new:
            return
        name: EventName = "REMOVE" if new is None else ("MODIFY" if old else "INSERT")
        self.records.append(
            StreamRecord(
                event_name=name,
                keys={n: key[n] for n in self.key_names},
                new_image=None if new is None else dict(new),
                old_image=None if old is None else dict(old),
                sequence_number=pad_seq(str(len(self.records) + 1)),
                approximate_creation=0.0,
            )
        )

    def put_item(self, **kwargs: Any) -> dict[str, Any]:
        item = dict(kwargs["Item"])
        old = self.items.get(self._id(item))
        self.items[self._id(item)] = item
        self._changed(item, old, item)
        return {}

    def update_item(self, **kwargs: Any) -> dict[str, Any]:
        key, expression = kwargs["Key"], kwargs["UpdateExpression"]
        names, values = kwargs["ExpressionAttributeNames"], kwargs["ExpressionAttributeValues"]
        assert expression.startswith("SET "), expression
        old = self.items.get(self._id(key))
        new = dict(old or key)
        for clause in expression[len("SET ") :].split(","):
            found = self._set_clause.match(clause)
            assert found, clause
            new[names[found.group(1)]] = values[found.group(2)]
        self.items[self._id(key)] = new
        self._changed(key, old, new)
        return {}

    def delete_item(self, **kwargs: Any) -> dict[str, Any]:
        key = kwargs["Key"]
        old = self.items.pop(self._id(key), None)
        self._changed(key, old, None)
        return {}


@dataclass(frozen=True)
class Op:
    """One write: by a consumer (``marks``) or by the application (``marks`` None)."""

    kind: str  # consumer: put, remove, tombstone, purge; application: put, update, delete
    marks: Marks | None = None
    attrs: tuple[tuple[str, Any], ...] = ()
    gap: int = 1  # a consumer's seq = its stamp on the held item + gap


NAMES = st.sampled_from(["a", "b", "c", "v"])
VALUES = st.one_of(st.text(max_size=4), st.integers(-5, 5).map(Decimal), st.booleans())
ATTRS = st.lists(st.tuples(NAMES, VALUES), max_size=3).map(lambda a: tuple(dict(a).items()))
GAP = st.integers(1, 10**6)
OPS = st.one_of(
    st.builds(Op, st.just("put"), st.sampled_from([FORWARD, REVERSE]), ATTRS, GAP),
    st.builds(Op, st.just("remove"), st.sampled_from([FORWARD, REVERSE]), gap=GAP),
    # Only the forward consumer writes tombstones (the reverse one deletes at once).
    st.builds(Op, st.just("tombstone"), st.just(FORWARD), gap=GAP),
    st.builds(Op, st.just("purge"), st.just(FORWARD)),
    st.builds(Op, st.just("put"), attrs=ATTRS),
    st.builds(Op, st.just("update"), attrs=st.tuples(NAMES, VALUES).map(lambda p: (p,))),
    st.builds(Op, st.just("delete")),
)
STAMPS = st.one_of(st.none(), st.integers(0, 10**6))


def held_seq(held: TypedItem | None, marks: Marks) -> str | None:
    if held is None or marks.seq_attr not in held:
        return None
    return str(held[marks.seq_attr]["S"])


def is_tombstone(held: TypedItem | None) -> bool:
    return held is not None and TOMBSTONE_ATTR in held


def flags_of(held: TypedItem | None, marks: Marks) -> bool:
    """Whether the held item carries ``marks``' delete mark or tombstone flag."""
    names = [name for name in (marks.delete_attr, marks.tombstone_attr) if name is not None]
    return held is not None and any(name in held for name in names)


def consumer_write(writer: DestinationWriter, op: Op, held: TypedItem | None) -> None:
    """Run ``op`` through the real writer, only where its condition would let it write."""
    held_n = int(held_seq(held, writer.marks) or "0")
    seq = pad_seq(str(held_n + op.gap))
    key = to_typed(KEY)
    if op.kind == "put":
        writer.put_if_newer(to_typed({**KEY, **dict(op.attrs)}), seq)
    elif op.kind == "tombstone":
        writer.remove(key, seq, tombstone=True)
    elif op.kind == "remove" and held is not None:  # absent: refused, no stream record
        writer.remove(key, seq, tombstone=False)
    elif op.kind == "purge" and is_tombstone(held):
        writer.purge_tombstone(key, str(held_seq(held, writer.marks)))


def app_write(table: StreamedTable, op: Op, held: TypedItem | None) -> None:
    """The application's own writes: never a ``_lm_*`` name of its own making."""
    if op.kind == "put":
        table.put_item(Item=to_typed({**KEY, **dict(op.attrs)}))
    elif held is None or is_tombstone(held):
        # Tombstones only exist while the backfill runs, before the application writes the
        # destination; an update or delete of an absent item is a put or nothing.
        return
    elif op.kind == "update":
        ((name, value),) = op.attrs
        table.update_item(
            Key=to_typed(KEY),
            UpdateExpression="SET #a = :a",
            ExpressionAttributeNames={"#a": name},
            ExpressionAttributeValues={":a": to_typed({"x": value})["x"]},
        )
    else:
        table.delete_item(Key=to_typed(KEY))


@given(
    start=st.one_of(st.none(), st.tuples(ATTRS, STAMPS, STAMPS)),
    ops=st.lists(OPS, min_size=1, max_size=12),
)
def test_writer_records_are_its_echoes_and_application_records_are_nobodys(
    start: tuple[tuple[tuple[str, Any], ...], int | None, int | None] | None, ops: list[Op]
) -> None:
    """What ``written_by`` promises, on records made by the real ``DestinationWriter``.

    - every record a writer with marks M makes (put, mark, delete on the mark, tombstone,
      purge) is ``written_by(M)``;
    - no application record (a put of its own item, an update keeping the other attributes, a
      delete) is ``written_by`` either direction;
    - a writer's record is an echo of the OTHER direction only if the item it found already
      carried that direction's delete mark or tombstone flag: the mark step is an update, and
      keeps what it finds (here: a reverse delete of a forward tombstone; a put replaces the
      item and keeps nothing of it). Stamps of the other direction never make an echo: a
      writer sets only its own sequence attribute.
    """
    table = StreamedTable(("pk",))
    if start is not None:
        attrs, forward_at, reverse_at = start
        held = {**KEY, **dict(attrs)}
        for marks, at in ((FORWARD, forward_at), (REVERSE, reverse_at)):
            if at is not None:
                held.update(stamp(marks, at))
        table.items[key_id(to_typed(KEY))] = to_typed(held)
    client = cast("DynamoDBClient", table)
    writers = {
        m: DestinationWriter(client, "t", ("pk",), "m1", marks=m) for m in (FORWARD, REVERSE)
    }
    for op in ops:
        before = table.items.get(key_id(to_typed(KEY)))
        first = len(table.records)
        if op.marks is None:
            app_write(table, op, before)
        else:
            consumer_write(writers[op.marks], op, before)
        made = table.records[first:]
        for record in made:
            if op.marks is None:
                assert not written_by(FORWARD, record), (op, record)
                assert not written_by(REVERSE, record), (op, record)
                continue
            other = REVERSE if op.marks is FORWARD else FORWARD
            assert written_by(op.marks, record), (op, record)
            assert not written_by(other, record) or flags_of(before, other), (op, record)
