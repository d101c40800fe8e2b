"""One contract for the destination writers: the model of the unit tests and DynamoDB's.

The hypothesis scenarios of tests/unit/test_consumer_model.py, test_consumer_handoff.py and
test_reverse_logic.py write through ``tests.support.consumer_model.ModelWriter``, an in-memory
destination with ``DestinationWriter``'s conditions. Every case below runs over the model and
over ``DestinationWriter`` on a moto table, write by write, outcome by outcome, so a condition
the model gets wrong fails here rather than passing the scenarios on a wrong premise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from livemigrate.destination import DestinationWriter, Held, Outcome
from livemigrate.items import TypedItem, key_id, to_plain, to_typed
from livemigrate.versioning import RESERVED_PREFIX, TOMBSTONE_ATTR, pad_seq
from tests.services import create_table, unique
from tests.support.consumer_model import ModelWriter

KEY = to_typed({"pk": "p", "sk": "s"})
# What the key holds: (its plain attributes without livemigrate's, a tombstone?) or None.
Reader = Callable[[], tuple[dict[str, Any], bool] | None]


def held_view(item: TypedItem | None) -> tuple[dict[str, Any], bool] | None:
    if item is None:
        return None
    plain = {k: v for k, v in to_plain(item).items() if not k.startswith(RESERVED_PREFIX)}
    return plain, TOMBSTONE_ATTR in item


@pytest.fixture(params=["model", "dynamodb"])
def writer(request: pytest.FixtureRequest) -> tuple[DestinationWriter, Reader]:
    """A destination writer on an empty table, and a reader of what ``KEY`` holds."""
    if request.param == "model":
        model = ModelWriter()
        return model, lambda: held_view(model.items.get(key_id(KEY)))
    clients = request.getfixturevalue("clients")
    table = unique("contract")
    create_table(clients.dynamodb, table, stream=None)
    real = DestinationWriter(clients.dynamodb, table, ("pk", "sk"), unique("mig"))

    def read() -> tuple[dict[str, Any], bool] | None:
        got = clients.dynamodb.get_item(TableName=table, Key=KEY, ConsistentRead=True)
        return held_view(got.get("Item"))

    return real, read


def item(v: int) -> TypedItem:
    return {**KEY, "v": {"N": str(v)}}


def test_a_backfill_put_lands_only_where_nothing_is_held(
    writer: tuple[DestinationWriter, Reader],
) -> None:
    w, read = writer
    assert w.put_if_absent(item(1)) is Outcome.WRITTEN
    assert w.put_if_absent(item(2)) is Outcome.ALREADY_COPIED, "its own copy, read again"
    assert read() == ({"pk": "p", "sk": "s", "v": 1}, False)
    assert w.put_if_newer(item(3), pad_seq("5")) is Outcome.APPLIED
    assert w.put_if_absent(item(4)) is Outcome.SUPERSEDED, "a live write is held"
    assert w.remove(KEY, pad_seq("6"), tombstone=True) is Outcome.TOMBSTONED
    assert w.put_if_absent(item(5)) is Outcome.SUPERSEDED, "a tombstone is held"
    assert read() == ({"pk": "p", "sk": "s"}, True)


def test_the_newer_stream_write_wins_and_equal_is_not_newer(
    writer: tuple[DestinationWriter, Reader],
) -> None:
    w, read = writer
    assert w.put_if_newer(item(1), pad_seq("5")) is Outcome.APPLIED
    assert w.put_if_newer(item(2), pad_seq("4")) is Outcome.STALE
    assert w.put_if_newer(item(3), pad_seq("5")) is Outcome.STALE
    assert w.remove(KEY, pad_seq("5"), tombstone=False) is Outcome.STALE
    assert read() == ({"pk": "p", "sk": "s", "v": 1}, False)
    assert w.remove(KEY, pad_seq("7"), tombstone=False) is Outcome.DELETED
    assert read() is None
    assert w.put_if_newer(item(4), pad_seq("6")) is Outcome.APPLIED, "a real delete keeps no seq"


def test_a_tombstone_is_purged_only_while_it_is_the_newest_write(
    writer: tuple[DestinationWriter, Reader],
) -> None:
    w, read = writer
    assert w.remove(KEY, pad_seq("5"), tombstone=True) is Outcome.TOMBSTONED
    assert w.put_if_newer(item(1), pad_seq("4")) is Outcome.STALE
    assert w.purge_tombstone(KEY, pad_seq("4")) is False
    assert w.purge_tombstone(KEY, pad_seq("5")) is True
    assert read() is None
    assert w.remove(KEY, pad_seq("8"), tombstone=True) is Outcome.TOMBSTONED
    assert w.put_if_newer(item(2), pad_seq("9")) is Outcome.APPLIED
    assert w.purge_tombstone(KEY, pad_seq("8")) is False, "replaced by a newer write"
    assert read() == ({"pk": "p", "sk": "s", "v": 2}, False)


def test_a_key_owned_by_one_source_item_is_refused_to_another(
    writer: tuple[DestinationWriter, Reader],
) -> None:
    w, read = writer
    assert w.claim(item(1), pad_seq("5"), "A") == (Outcome.APPLIED, None)
    outcome, held = w.claim(item(2), pad_seq("6"), "B")
    assert outcome is Outcome.OWNED_BY_OTHER
    assert held == Held("A", pad_seq("5"), False)
    stale, _ = w.claim(item(3), pad_seq("4"), "A")
    assert stale is Outcome.STALE
    assert w.remove(KEY, pad_seq("7"), tombstone=True, owner="B") is Outcome.NOT_OWNER
    assert read() == ({"pk": "p", "sk": "s", "v": 1}, False)
    # A hand-off decided on what was read lands only while the key still holds exactly that.
    assert w.claim(item(4), pad_seq("8"), "B", replacing=held) == (Outcome.APPLIED, None)
    changed, now = w.claim(item(5), pad_seq("9"), "C", replacing=held)
    assert changed is Outcome.CHANGED and now == Held("B", pad_seq("8"), False)
    assert read() == ({"pk": "p", "sk": "s", "v": 4}, False)
