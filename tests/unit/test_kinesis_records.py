"""Kinesis record format and its version rule (stream_consumer.kinesis.records).

Hypothesis: versions order by creation time, duplicates are no-ops, and folding any delivery
order (shuffled, duplicated) by the version rule ends at the same change.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from livemigrate.errors import LivemigrateError
from livemigrate.records import StreamRecord
from livemigrate.versioning import BACKFILL_SEQ, SEQ_WIDTH, is_newer, pad_seq
from stream_consumer.kinesis.records import (
    POSITION_WIDTH,
    NotAChangeRecord,
    PrecisionRefused,
    change_record,
    micros_of,
    parse_kinesis_record,
    version_floor,
)

NOW = 1_764_633_600_000_000  # 2025-12-02 in microseconds
KEY = {"pk": {"S": "section-outbox|docket"}, "sk": {"S": "i0001"}}

# Each example parses several records (JSON, canonical form, digest): keep the suite's time
# small, the generated cases still cover orders, duplicates and ties.
FEW = settings(max_examples=30)

micros = st.integers(min_value=0, max_value=10**19)
values = st.one_of(
    st.text(max_size=8).map(lambda s: {"S": s}),
    st.integers(-(10**6), 10**6).map(lambda n: {"N": str(n)}),
    st.binary(max_size=6).map(lambda b: {"B": b}),
)
images = st.dictionaries(st.sampled_from(["a", "b", "c"]), values, max_size=3).map(
    lambda extra: {**KEY, **extra}
)


def record(
    event: str,
    when: int,
    new: dict[str, Any] | None = None,
    old: dict[str, Any] | None = None,
    *,
    seq: str = "1",
    precision: str = "MICROSECOND",
) -> StreamRecord:
    data = change_record(event, KEY, new, old, when, table_name="t", precision=precision)
    return parse_kinesis_record(json.dumps(data).encode(), sequence_number=seq, shard_id="s-0")


def winner(records: list[StreamRecord]) -> StreamRecord:
    """What the destination ends with, folding deliveries in order by the version rule."""
    held: StreamRecord | None = None
    for r in records:
        if is_newer(r.sequence_number, None if held is None else held.sequence_number):
            held = r
    assert held is not None
    return held


@FEW
@given(micros, micros, images, images)
def test_versions_are_40_digits_and_order_by_creation_time(
    a: int, b: int, new_a: dict[str, Any], new_b: dict[str, Any]
) -> None:
    ra, rb = record("MODIFY", a, new_a, KEY), record("MODIFY", b, new_b, KEY)
    for r in (ra, rb):
        assert len(r.sequence_number) == SEQ_WIDTH and r.sequence_number.isdigit()
        assert pad_seq(r.sequence_number) == r.sequence_number  # the DynamoDB Streams form
        assert is_newer(r.sequence_number, BACKFILL_SEQ)
    assert micros_of(ra.sequence_number) == a
    if a != b:
        assert is_newer(ra.sequence_number, rb.sequence_number) == (a > b)
    assert ra.approximate_creation == a / 1_000_000


@FEW
@given(micros, images, st.integers(1, 10**40).map(str), st.integers(1, 10**40).map(str))
def test_a_duplicate_delivery_is_a_no_op_whatever_its_kinesis_sequence_number(
    when: int, new: dict[str, Any], seq1: str, seq2: str
) -> None:
    # GIVEN one change put twice into Kinesis (a retry: a second, different sequence number)
    first = record("INSERT", when, new, seq=seq1)
    again = record("INSERT", when, new, seq=seq2)
    # THEN both carry one version: the second is not newer than the first
    assert first.sequence_number == again.sequence_number
    assert not is_newer(again.sequence_number, first.sequence_number)


def test_the_version_ignores_how_the_json_spells_equal_values() -> None:
    a = record("MODIFY", NOW, {**KEY, "n": {"N": "10"}}, KEY)
    b = record("MODIFY", NOW, {**KEY, "n": {"N": "10.0"}}, KEY)
    assert a.sequence_number == b.sequence_number


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[StreamRecord], list[StreamRecord]]:
    """An item's changes at distinct microseconds, and a delivery of them: shuffled, some
    delivered twice, on shards whose sequence numbers say nothing across shards."""
    stamps = sorted(draw(st.sets(st.integers(NOW, NOW + 10**6), min_size=1, max_size=8)))
    changes: list[StreamRecord] = []
    old: dict[str, Any] | None = None
    for i, when in enumerate(stamps):
        if old is not None and draw(st.booleans()) and i == len(stamps) - 1:
            changes.append(record("REMOVE", when, None, old))
            break
        new = {**KEY, "v": {"N": str(i)}, **draw(images)}
        changes.append(record("INSERT" if old is None else "MODIFY", when, new, old))
        old = new
    extra = draw(st.lists(st.sampled_from(changes), max_size=4))
    delivered = draw(st.permutations(changes + extra))
    return changes, list(delivered)


@FEW
@given(histories())
def test_any_delivery_order_with_duplicates_ends_at_the_last_change(
    case: tuple[list[StreamRecord], list[StreamRecord]],
) -> None:
    changes, delivered = case
    assert winner(delivered) == changes[-1]


@FEW
@given(images, images, st.permutations(range(4)))
def test_two_changes_in_one_microsecond_end_the_same_whatever_the_order(
    new_a: dict[str, Any], new_b: dict[str, Any], order: list[int]
) -> None:
    # GIVEN two different MODIFYs of one item stamped with the same microsecond, each
    # delivered twice, in any order
    a = record("MODIFY", NOW, {**new_a, "v": {"S": "a"}}, KEY)
    b = record("MODIFY", NOW, {**new_b, "v": {"S": "b"}}, KEY)
    assert a.sequence_number != b.sequence_number  # told apart, not taken for duplicates
    deliveries = [a, b, a, b]
    # THEN every order ends with the same one (the digest order): replays agree
    assert winner([deliveries[i] for i in order]) == max(a, b, key=lambda r: r.sequence_number)


@FEW
@given(images, images)
def test_within_one_microsecond_insert_modify_remove_keep_their_lifetime_order(
    first: dict[str, Any], second: dict[str, Any]
) -> None:
    insert = record("INSERT", NOW, first)
    modify = record("MODIFY", NOW, second, first)
    remove = record("REMOVE", NOW, None, second)
    assert winner([modify, insert]) == modify
    assert winner([remove, modify, insert]) == remove  # a delete is not undone by a tie


@pytest.mark.parametrize("precision", ["MILLISECOND", None])
def test_millisecond_precision_is_refused_with_the_fix(precision: str | None) -> None:
    data = change_record("INSERT", KEY, KEY, None, NOW // 1000, table_name="orders")
    if precision is None:
        del data["dynamodb"]["ApproximateCreationDateTimePrecision"]  # the default: ms
    else:
        data["dynamodb"]["ApproximateCreationDateTimePrecision"] = precision
    with pytest.raises(PrecisionRefused) as caught:
        parse_kinesis_record(json.dumps(data), sequence_number="7")
    assert isinstance(caught.value, LivemigrateError)
    assert "MILLISECOND" in caught.value.problem and "orders" in caught.value.problem
    assert "UpdateKinesisStreamingDestination" in caught.value.fix
    assert "MICROSECOND" in caught.value.fix


@given(st.integers(0, 10**128), st.integers(0, 10**128))
def test_positions_order_like_kinesis_sequence_numbers(a: int, b: int) -> None:
    ra, rb = record("INSERT", NOW, KEY, seq=str(a)), record("INSERT", NOW, KEY, seq=str(b))
    assert len(ra.at) == POSITION_WIDTH
    assert (ra.at < rb.at) == (a < b)
    assert ra.raw["kinesis"] == {"sequenceNumber": str(a), "shardId": "s-0"}


@given(st.floats(0, 4e9), micros, images)
def test_version_floor_splits_changes_made_before_and_after(
    seconds: float, when: int, new: dict[str, Any]
) -> None:
    floor = version_floor(seconds)
    version = record("MODIFY", when, new, KEY).sequence_number
    assert (version < floor) == (when < int(seconds * 1_000_000))


def test_images_come_back_typed_for_boto3_binary_as_bytes() -> None:
    key = {"pk": {"B": b"\x00\xff"}, "sk": {"N": "1"}}
    data = change_record("INSERT", key, {**key, "d": {"N": "2.50"}}, None, NOW, table_name="t")
    parsed = parse_kinesis_record(json.dumps(data).encode(), sequence_number="12", shard_id="x")
    assert parsed.keys == key
    assert parsed.new_image == {**key, "d": {"N": "2.50"}}
    assert parsed.old_image is None
    assert parsed.event_name == "INSERT"
    assert Decimal(parsed.new_image["d"]["N"]) == Decimal("2.5")


@pytest.mark.parametrize("data", [b"not json", b"[1]", json.dumps({"eventName": "PUT"})])
def test_data_that_is_not_a_change_record_is_refused(data: bytes | str) -> None:
    with pytest.raises(NotAChangeRecord):
        parse_kinesis_record(data, sequence_number="1")
