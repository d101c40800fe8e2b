"""Request accounting: DynamoDB's size rules and what each request is charged (issue 18)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from boto3.dynamodb.types import Binary
from hypothesis import given
from hypothesis import strategies as st

from livemigrate import accounting, status
from livemigrate.accounting import Accounting, Ledger, Usage, charge
from livemigrate.control import with_unit_totals
from livemigrate.items import item_size, number_size
from livemigrate.values import number_text


def s(text: str) -> dict[str, Any]:
    return {"S": text}


def test_item_size_follows_dynamodb_rules() -> None:
    # GIVEN one value of every kind, WHEN sized, THEN names + values by the published rules
    assert item_size({"pk": s("abc")}) == 2 + 3
    assert item_size({"n": {"N": "12345"}}) == 1 + (3 + 1)  # 5 digits -> 3 bytes + 1
    assert item_size({"n": {"N": "-1.50"}}) == 1 + (1 + 1 + 1)  # 15: 1 byte + 1, negative + 1
    assert item_size({"b": {"B": b"\x00" * 10}}) == 1 + 10
    assert item_size({"t": {"BOOL": True}, "z": {"NULL": True}}) == 2 + 2
    assert item_size({"l": {"L": [s("ab"), s("c")]}}) == 1 + 3 + (1 + 2) + (1 + 1)
    assert item_size({"m": {"M": {"k": s("v")}}}) == 1 + 3 + (1 + 1 + 1)
    assert item_size({"ss": {"SS": ["a", "bc"]}}) == 2 + 3
    assert item_size({"é": s("é")}) == 2 + 2  # UTF-8 bytes, not characters


def _utf8(text: str) -> int:
    return len(text.encode())


def _plain_size(value: dict[str, Any]) -> int:
    """The published rules, written out with no shortcut: every text is encoded."""
    ((kind, raw),) = value.items()
    if kind == "S":
        return _utf8(raw)
    if kind == "SS":
        return sum(_utf8(t) for t in raw)
    if kind == "B":
        return len(bytes(raw))  # Binary gives its bytes
    if kind == "L":
        return 3 + sum(1 + _plain_size(v) for v in raw)
    assert kind == "M"
    return 3 + sum(1 + _utf8(k) + _plain_size(v) for k, v in raw.items())


_texts = st.text(max_size=12)
_scalars = st.one_of(
    _texts.map(lambda t: {"S": t}),
    st.lists(_texts, min_size=1, max_size=3, unique=True).map(lambda ts: {"SS": ts}),
    st.binary(max_size=8).map(lambda b: {"B": Binary(b)}),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda vs: {"L": vs}),
        st.dictionaries(_texts, inner, max_size=3).map(lambda m: {"M": m}),
    ),
    max_leaves=8,
)


@given(st.dictionaries(_texts.filter(bool), _values, min_size=1, max_size=4))
def test_item_size_counts_utf8_bytes_of_any_text(item: dict[str, Any]) -> None:
    # GIVEN names and texts of any characters (ASCII ones take a short path), nested in lists
    # and maps, and binary given as boto3's Binary, WHEN sized, THEN UTF-8 bytes by the rules
    expected = sum(_utf8(name) + _plain_size(value) for name, value in item.items())
    assert item_size(item) == expected


def test_an_unknown_type_is_refused() -> None:
    with pytest.raises(ValueError, match="not a DynamoDB type: 'X'"):
        item_size({"a": {"X": "1"}})


def big(size: int) -> dict[str, Any]:
    """A typed item of exactly ``size`` bytes."""
    return {"pk": s("x" * (size - 2))}


def test_writes_round_up_per_kilobyte_per_item() -> None:
    params = {"TableName": "t", "Item": big(1025)}
    assert charge("PutItem", params, {}, ok=True)["t"] == Usage(1, write_units=2)
    assert charge("PutItem", {"TableName": "t", "Item": big(10)}, {}, True)["t"].write_units == 1


def test_a_failed_condition_is_charged_like_a_write() -> None:
    # GIVEN a conditional put refused by its condition (ok: only the condition failed)
    usage = charge("PutItem", {"TableName": "t", "Item": big(3000)}, {}, ok=True)["t"]
    # THEN it costs the units of the item it tried to write
    assert usage.write_units == 3
    # AND a request refused otherwise (throttled) counts as a request without units
    assert charge("PutItem", {"TableName": "t", "Item": big(3000)}, {}, False)["t"] == Usage(1)


def test_reads_sum_sizes_per_request_and_eventual_reads_cost_half() -> None:
    items = [big(1000)] * 9  # 9,000 bytes -> 3 x 4 KB
    eventual = charge("Scan", {"TableName": "t"}, {"Items": items}, True)["t"]
    consistent = charge("Query", {"TableName": "t", "ConsistentRead": True}, {"Items": items}, True)
    assert eventual.read_units == 1.5
    assert consistent["t"].read_units == 3
    # An empty page or a missing item still costs the minimum
    assert charge("GetItem", {"TableName": "t"}, {}, True)["t"].read_units == 0.5


def test_update_is_charged_by_the_returned_item_when_there_is_one() -> None:
    params = {"TableName": "t", "Key": {"pk": s("k")}, "ReturnValues": "ALL_NEW"}
    assert charge("UpdateItem", params, {"Attributes": big(2100)}, True)["t"].write_units == 3
    # Without returned attributes: what the request carries (key + values)
    params = {"TableName": "t", "Key": {"pk": s("k")}, "ExpressionAttributeValues": {":v": s("x")}}
    assert charge("UpdateItem", params, {}, True)["t"].write_units == 1


def test_batch_write_charges_only_processed_items_and_transactions_double() -> None:
    requests = [{"PutRequest": {"Item": big(1500)}}] * 3
    parsed = {"UnprocessedItems": {"t": requests[:1]}}
    usage = charge("BatchWriteItem", {"RequestItems": {"t": requests}}, parsed, True)["t"]
    assert usage == Usage(1, write_units=4)  # 2 processed x 2 units
    actions = [{"Put": {"TableName": "t", "Item": big(100)}}] * 2
    assert charge("TransactWriteItems", {"TransactItems": actions}, {}, True)["t"].write_units == 4


def test_control_plane_calls_are_requests_without_units() -> None:
    assert charge("DescribeTable", {"TableName": "t"}, {}, True) == {"t": Usage(1)}


def test_unsent_usage_is_given_back_when_the_write_carrying_it_fails() -> None:
    # GIVEN usage recorded on a migration's table and on an unrelated one
    book = Accounting()
    book.record("src", "Scan", Usage(1, read_units=0.5))
    book.record("other", "Scan", Usage(1, read_units=0.5))
    ledger = Ledger(book, {"src": "source"})
    # WHEN the write that carries it fails
    with pytest.raises(RuntimeError), ledger.unsent() as costs:
        assert costs == {"cost.source.Scan.requests": 1, "cost.source.Scan.read_units": 0.5}
        raise RuntimeError("control table unreachable")
    # THEN the next write carries it (once), and only this migration's tables
    with ledger.unsent() as costs:
        assert costs == {"cost.source.Scan.requests": 1, "cost.source.Scan.read_units": 0.5}
    with ledger.unsent() as costs:
        assert costs == {}
    assert ledger.by_role() == {"source": {"Scan": Usage(1, 0.5).as_dict()}}


def test_status_sums_backfill_and_consumer_costs_and_keeps_them_out_of_counters() -> None:
    groups: dict[str, list[tuple[str, dict[str, Any]]]] = {
        "METRICS": [("METRICS", {"items_read": 3, "cost.control.UpdateItem.requests": 2})],
        "CONSUMER": [
            ("CONSUMER#source", {"heartbeat_at": 1.0, "cost.control.UpdateItem.requests": 5}),
            ("CONSUMER#reverse", {"cost.source.PutItem.write_units": 4}),
        ],
    }
    summary = status.requests_of(groups)
    assert summary["by_role"]["control"]["requests"] == 7
    assert summary["by_operation"]["source"]["PutItem"]["write_units"] == 4
    assert status._without_costs(groups["METRICS"][0][1]) == {"items_read": 3}
    assert accounting.unflatten({"cost.bad": 1, "other": 2}) == {}


def test_status_counts_the_costs_and_counters_the_backfill_units_carry() -> None:
    # GIVEN request units that rode on two units' checkpoints and on METRICS, and counters
    # kept on the units (METRICS still holds an older release's own count)
    groups: dict[str, list[tuple[str, dict[str, Any]]]] = {
        "METRICS": [("METRICS", {"items_read": 99, "cost.control.UpdateItem.requests": 2})],
        "SEG": [
            ("SEG#000000", {"items_read": 10, "cost.destination.PutItem.requests": 10}),
            ("SEG#000001", {"items_read": 5, "already_copied": 1}),
        ],
        "SPLIT": [("SPLIT#000000#0", {"items_read": 4, "cost.control.UpdateItem.requests": 1})],
    }
    # WHEN status sums them
    summary = status.requests_of(groups)
    # THEN every carrier counts once, and the counters are the units' sums
    assert summary["by_role"]["control"]["requests"] == 3
    assert summary["by_role"]["destination"]["requests"] == 10
    totals = with_unit_totals(groups["METRICS"][0][1], status._units(groups))
    assert totals["items_read"] == 19 and totals["items_already_copied"] == 1


class _Model:
    name = "PutItem"


class _Response:
    def __init__(self, status_code: int) -> None:
        self.status_code = status_code


def test_the_hook_charges_a_refused_condition_but_not_a_throttled_request() -> None:
    # GIVEN the after-call hook of an installed client's accounting, and a conditional put
    book = Accounting()
    counter = accounting._Counter(book)
    context = {accounting._PARAMS: {"TableName": "t", "Item": big(1500)}}
    refused = {"Error": {"Code": "ConditionalCheckFailedException"}}
    throttled = {"Error": {"Code": "ProvisionedThroughputExceededException"}}
    # WHEN DynamoDB refuses its condition (HTTP 400), then throttles it
    counter(http_response=_Response(400), parsed=refused, model=_Model(), context=context)
    counter(http_response=_Response(400), parsed=throttled, model=_Model(), context=context)
    # THEN the refused write is charged its 2 units, the throttled one none; both are requests
    assert book.totals()[("t", "PutItem")] == Usage(2, write_units=2)


@given(st.integers(min_value=0, max_value=10**38 - 1), st.integers(min_value=0, max_value=3))
def test_integer_text_is_sized_like_any_number(n: int, zeros: int) -> None:
    # the plain-integer shortcut (no Decimal) counts the significant digits of DynamoDB's
    # canonical number text, leading and trailing zeroes not counted, all 38 digits kept
    text = "0" * zeros + str(n)
    significant = len(number_text(text).strip("0")) or 1
    assert number_size(text) == math.ceil(significant / 2) + 1


@given(
    st.integers(min_value=1, max_value=10**38 - 1),
    st.integers(min_value=-40, max_value=40),
    st.booleans(),
)
def test_every_one_of_38_digits_is_charged(digits: int, exponent: int, negative: bool) -> None:
    # a number of up to 38 significant digits, at any scale: its size counts all of them (the
    # default decimal context rounded to 28 and under-charged longer numbers)
    text = f"{'-' if negative else ''}{digits}E{exponent}"
    significant = len(str(digits).rstrip("0"))
    sign = 1 if negative else 0
    assert number_size(text) == math.ceil(significant / 2) + 1 + sign
