"""DynamoDB's value semantics in one canonical form (issue 11): digests, key ids, document ids,
the applier's key diffs and the transform's key check all agree with DynamoDB."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, cast

import pytest
from boto3.dynamodb.types import Binary
from hypothesis import given
from hypothesis import strategies as st

from livemigrate import items
from livemigrate.clock import FakeClock
from livemigrate.destination import DestinationWriter
from livemigrate.items import to_plain, to_typed
from livemigrate.records import StreamRecord
from livemigrate.search.documents import build_document, default_document, document_id
from livemigrate.transform import Transformer
from livemigrate.values import (
    canonical_text,
    canonical_value,
    from_dynamodb_json,
    key_text,
    number_text,
    to_dynamodb_json,
)
from livemigrate.verify import digest
from stream_consumer.applier import DeleteMode, DestinationApplier
from stream_consumer.metrics import Metrics

N38 = "12345678901234567890123456789012345678"
N38_OTHER = N38[:-1] + "9"  # differs in the 38th digit only
FRACTION38 = "0." + N38  # 38 significant digits after the point


# -- item 1: 38 digits everywhere ------------------------------------------------------------
@pytest.mark.parametrize("a, b", [(N38, N38_OTHER), (FRACTION38, "0." + N38_OTHER)])
def test_numbers_differing_in_the_38th_digit_differ_in_digest_key_id_and_document_id(
    a: str, b: str
) -> None:
    """GIVEN two numbers that differ only in the 38th significant digit THEN the verify digest,
    the verify key id, the applier's key id and the search document id all tell them apart
    (Python's default 28-digit context made them one: issue 11, item 1)."""
    one, two = {"pk": {"N": a}}, {"pk": {"N": b}}
    assert digest.item_hash(one) != digest.item_hash(two)
    assert digest.key_id(one, ("pk",)) != digest.key_id(two, ("pk",))
    assert items.key_id(one) != items.key_id(two)
    assert document_id(one) != document_id(two)


def test_one_dynamodb_number_in_several_spellings_is_one_key() -> None:
    spellings = ["10", "10.0", "1E+1", "10.000", "+10", "0010"]
    assert {number_text(s) for s in spellings} == {"10"}
    assert len({items.key_id({"pk": {"N": s}}) for s in spellings}) == 1
    assert len({document_id({"pk": {"N": s}}) for s in spellings}) == 1
    assert items.key_id({"pk": Decimal("10.0")}) == items.key_id({"pk": {"N": "10"}})
    assert number_text("-0.0") == "0"
    assert number_text("1E-130") == "0." + "0" * 129 + "1"


@pytest.mark.parametrize("bad", ["1" * 39, "1E+126", "1E-131", "NaN", "Infinity", "x"])
def test_numbers_dynamodb_cannot_hold_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        number_text(bad)


def test_canonical_form_sets_are_sets_binary_is_bytes_and_nothing_else_is_lost() -> None:
    a = {
        "ss": {"SS": ["b", "a"]},
        "ns": {"NS": ["2", "1.0"]},
        "bs": {"BS": [b"\x01", Binary(b"\x00")]},
        "b": {"B": bytearray(b"\x00\xff")},
        "e": {"S": ""},
        "eb": {"B": b""},
        "n": {"NULL": True},
        "t": {"BOOL": False},
        "m": {"M": {"l": {"L": [{"N": "1.50"}, {"S": "x"}]}}},
    }
    b = {
        "ss": {"SS": ["a", "b"]},
        "ns": {"NS": ["1", "2"]},
        "bs": {"BS": [b"\x00", b"\x01"]},
        "b": {"B": Binary(b"\x00\xff")},
        "e": {"S": ""},
        "eb": {"B": b""},
        "n": {"NULL": True},
        "t": {"BOOL": False},
        "m": {"M": {"l": {"L": [{"N": "1.5"}, {"S": "x"}]}}},
    }
    assert canonical_text(a) == canonical_text(b)
    for name, changed in [
        ("t", {"BOOL": True}),
        ("e", {"S": " "}),
        ("eb", {"B": b"\x00"}),
        ("m", {"M": {"l": {"L": [{"S": "x"}, {"N": "1.5"}]}}}),  # list order counts
        ("ss", {"SS": ["a"]}),
        ("n", {"S": ""}),
    ]:
        assert canonical_text({**b, name: changed}) != canonical_text(b), name


typed_scalars = st.one_of(
    st.text(max_size=4).map(lambda v: {"S": v}),
    # at most 38 significant digits (33 + 5 places): DynamoDB holds no more
    st.decimals(min_value=-(10**33) + 1, max_value=10**33 - 1, places=5).map(
        lambda d: {"N": str(d)}
    ),
    st.binary(max_size=4).map(lambda v: {"B": v}),
    st.booleans().map(lambda v: {"BOOL": v}),
    st.just({"NULL": True}),
    st.sets(st.binary(min_size=1, max_size=3), min_size=1, max_size=3).map(
        lambda v: {"BS": list(v)}
    ),
)
typed_values = st.recursive(
    typed_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda v: {"L": v}),
        st.dictionaries(st.text(max_size=3), inner, max_size=3).map(lambda v: {"M": v}),
    ),
    max_leaves=6,
)


@given(st.dictionaries(st.text(min_size=1, max_size=4), typed_values, max_size=5))
def test_dynamodb_json_round_trips_exactly_and_plain_round_trip_keeps_the_canonical_form(
    item: dict[str, Any],
) -> None:
    """GIVEN any typed item THEN DynamoDB JSON parses back to the same typed item, and the
    plain form (what transforms see) has the same canonical form."""
    assert from_dynamodb_json(to_dynamodb_json(item)) == item
    assert canonical_text(to_typed(to_plain(item))) == canonical_text(item)


def test_key_ids_of_plain_and_typed_keys_agree() -> None:
    assert key_text({"pk": "a", "sk": Decimal("1.0")}) == key_text(
        {"sk": {"N": "1"}, "pk": {"S": "a"}}
    )
    assert key_text({"pk": Binary(b"\x00")}) == key_text({"pk": {"B": b"\x00"}})
    assert canonical_value({"B": Binary(b"\x00")}) == {"B": "AA=="}


def test_default_document_keeps_38_digit_numbers_exactly() -> None:
    doc = build_document(default_document, {"pk": {"S": "a"}, "n": {"N": FRACTION38}})
    assert doc == {"pk": "a", "n": number_text(FRACTION38)}
    assert build_document(default_document, {"n": {"N": "2.5"}, "i": {"N": "10.0"}}) == {
        "n": 2.5,
        "i": 10,
    }


# -- item 2: the applier compares destination keys by DynamoDB's value -------------------------
def _number_key_transform(item: dict[str, Any]) -> list[dict[str, Any]]:
    # The same DynamoDB number in two spellings, from two versions of one item.
    return [{"pk": Decimal(str(item["k"])), "v": item["v"]}]


def test_applier_plans_one_put_when_old_and_new_image_give_one_key_in_two_spellings() -> None:
    """GIVEN a transform mapping the OldImage to key 10 and the NewImage to key 10.0 (one
    DynamoDB number) WHEN the applier plans the record THEN it puts the item and removes
    nothing (before: a put and a removal of the same item in two queues; when the removal
    landed first the put was stale and the item was lost: issue 11, item 2)."""
    transformer = Transformer(_number_key_transform, ("pk",), {"pk": "N"})
    writer = DestinationWriter(cast(Any, None), "dest", ("pk",), "mig")
    mode = DeleteMode(lambda: False, cast(Any, None), "source", FakeClock())
    applier = DestinationApplier(transformer, writer, mode, Metrics("source"), threads=1)
    try:
        record = StreamRecord(
            "MODIFY",
            {"id": {"S": "x"}},
            {"id": {"S": "x"}, "k": {"S": "10.0"}, "v": {"N": "2"}},
            {"id": {"S": "x"}, "k": {"S": "10"}, "v": {"N": "1"}},
            "1".zfill(40),
            0.0,
        )
        ops = applier.plan(record, 0)
    finally:
        applier.close()
    assert [(op.item is not None, op.orphan) for op in ops] == [(True, False)]


# -- item 3: binary keys pass the transform's check ---------------------------------------------
def test_identity_transform_of_a_binary_key_item_is_accepted() -> None:
    """GIVEN an item with a binary key, deserialised by boto3 (``Binary``, not ``bytes``) WHEN
    an identity transform returns it THEN the key check accepts it (before: "key 'pk' must be
    bytes" and every item was dead-lettered: issue 11, item 3)."""
    transformer = Transformer(lambda item: [item], ("pk", "sk"), {"pk": "B", "sk": "N"})
    typed = {"pk": {"B": b"\x00\xff"}, "sk": {"N": N38}, "v": {"BS": [b"\x01"]}}
    (out,) = transformer.run(to_plain(typed))
    assert canonical_text(out) == canonical_text(typed)
    with pytest.raises(Exception, match="non-empty bytes"):
        Transformer(lambda item: [{**item, "pk": b""}], ("pk",), {"pk": "B"}).run({"pk": b"x"})


def test_a_stream_record_takes_its_key_from_the_image() -> None:
    """GIVEN a record whose binary ``Keys`` are base64 text of the bytes (moto's server encodes
    them twice) THEN the parsed key is the image's, the same bytes the table holds."""
    image = {"pk": {"B": b"\nv"}, "v": {"S": "x"}}
    raw = {
        "eventName": "INSERT",
        "dynamodb": {"Keys": {"pk": {"B": b"CnY="}}, "NewImage": image, "SequenceNumber": "1"},
    }
    assert StreamRecord.from_boto(raw).keys == {"pk": {"B": b"\nv"}}


def test_an_owner_id_reads_back_as_the_source_key_for_every_key_type() -> None:
    """GIVEN source keys of each scalar type (binary and a 38-digit number included) WHEN an
    owner id is made from one and read back (repair and handoffs read the owner's item) THEN
    it is the same key, in DynamoDB's value semantics."""
    from livemigrate.ownership import key_from_id, owner_id

    for key in (
        {"pk": {"S": "user|1"}, "sk": {"S": "profile"}},
        {"pk": {"N": "12345678901234567890123456789012345678"}},
        {"pk": {"B": b"\x00\xffbinary"}, "sk": {"N": "10.0"}},
    ):
        back = key_from_id(owner_id(key))
        assert back is not None
        assert items.key_id(back) == items.key_id(key)
