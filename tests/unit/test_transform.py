"""The transform contract: 0/1/N outputs, and every bad output becomes a reason, not a crash."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any

import pytest

from livemigrate.errors import TransformLoadError, TransformOutputError
from livemigrate.examples.hot_outbox import transform as hot_outbox
from livemigrate.items import MAX_ITEM_BYTES
from livemigrate.transform import Transformer, load_transform

KEYS = ("pk", "sk")
TYPES = {"pk": "S", "sk": "S"}


def runner(fn: Any) -> Transformer:
    return Transformer(fn, KEYS, TYPES)


def test_hot_outbox_item_moves_to_its_month_shard() -> None:
    item = {"pk": "section-outbox|docket", "sk": "m-1", "createdAt": Decimal(1_700_000_000)}
    (out,) = runner(hot_outbox).run(item)
    assert out["pk"] == {"S": "section-outbox|docket|2023-11"}
    assert out["created_at"]["S"].startswith("2023-11-14T22:13:20")
    assert out["schema_version"] == {"N": "2"}
    assert "createdAt" not in out


def test_other_items_keep_their_key_and_get_the_schema_change() -> None:
    item = {"pk": "user|1", "sk": "profile", "createdAt": Decimal(0), "name": "Ada"}
    (out,) = runner(hot_outbox).run(item)
    assert out["pk"] == {"S": "user|1"}
    assert out["name"] == {"S": "Ada"}
    assert out["created_at"] == {"S": "1970-01-01T00:00:00+00:00"}


def test_zero_and_many_outputs_are_allowed() -> None:
    def fan(item: dict[str, Any]) -> Iterable[dict[str, Any]]:
        return [{"pk": item["pk"], "sk": f"{item['sk']}#{i}"} for i in range(int(item["n"]))]

    assert runner(fan).run({"pk": "a", "sk": "b", "n": Decimal(0)}) == []
    assert len(runner(fan).run({"pk": "a", "sk": "b", "n": Decimal(3)})) == 3


@pytest.mark.parametrize(
    ("fn", "reason"),
    [
        (lambda item: 1 / 0, "transform raised ZeroDivisionError"),
        (lambda item: {"pk": "a", "sk": "b"}, "single dict"),
        (lambda item: [{"pk": "a"}], "lacks destination key attribute 'sk'"),
        (lambda item: [{"pk": "", "sk": "b"}], "non-empty string"),
        (lambda item: [{"pk": "a", "sk": "b", "_lm_seq": "x"}], "reserved"),
        (lambda item: [{"pk": "a", "sk": "b", "f": 1.5}], "cannot be stored"),
        (lambda item: [{"pk": "a", "sk": "b", "blob": "x" * 410_000}], "DynamoDB's limit"),
    ],
)
def test_bad_outputs_raise_a_reason(fn: Any, reason: str) -> None:
    with pytest.raises(TransformOutputError, match=reason):
        runner(fn).run({"pk": "a", "sk": "b"})


def test_the_size_limit_counts_bytes_as_dynamodb_does() -> None:
    # GIVEN outputs sized by DynamoDB's rules: names and UTF-8 text ("é" is 2 bytes), and the
    # 128 bytes left for livemigrate's own attributes
    room = MAX_ITEM_BYTES - 128 - len("pkaskbblob")

    def sized(text: str) -> Any:
        return lambda item: [{"pk": "a", "sk": "b", "blob": text}]

    # WHEN an output fills the room exactly, THEN it passes; one byte more is refused
    assert runner(sized("x" * room)).run({"pk": "a", "sk": "b"})
    with pytest.raises(TransformOutputError, match=f"output item is {MAX_ITEM_BYTES - 127} "):
        runner(sized("é" + "x" * (room - 1))).run({"pk": "a", "sk": "b"})


def test_hot_outbox_rejects_an_item_without_a_creation_date() -> None:
    with pytest.raises(TransformOutputError, match="createdAt"):
        runner(hot_outbox).run({"pk": "x", "sk": "y"})


def test_load_transform_errors_name_the_problem() -> None:
    with pytest.raises(TransformLoadError, match="cannot be imported"):
        load_transform("no_such_module_xyz:fn")
    with pytest.raises(TransformLoadError, match="no callable 'nope'"):
        load_transform("livemigrate.examples.hot_outbox:nope")
    assert load_transform("livemigrate.examples.hot_outbox:transform") is hot_outbox
