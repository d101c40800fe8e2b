"""Item conversions between DynamoDB's typed form ("AttributeValue" maps) and plain Python.

Plain items are what boto3's TypeDeserializer gives: numbers are ``Decimal``, binary is
``Binary``, sets are ``set``. Transforms see and return plain items.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import Binary, TypeDeserializer, TypeSerializer

from livemigrate.values import is_binary, key_text, raw_bytes

PlainItem = dict[str, Any]
TypedItem = dict[str, Any]

MAX_ITEM_BYTES = 400 * 1024

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def to_plain(item: Mapping[str, Any]) -> PlainItem:
    """Typed DynamoDB item → plain dict (numbers as Decimal)."""
    return {k: _deserializer.deserialize(v) for k, v in item.items()}


def to_typed(item: Mapping[str, Any]) -> TypedItem:
    """Plain dict → typed DynamoDB item. Floats are refused by boto3: use Decimal."""
    return {k: _serializer.serialize(v) for k, v in item.items()}


def decimalize(value: Any) -> Any:
    """Floats (times, rates) → Decimal, recursively, so bookkeeping items can hold them."""
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, dict):
        return {k: decimalize(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [decimalize(v) for v in value]
    return value


def key_of(item: Mapping[str, Any], key_names: Sequence[str]) -> dict[str, Any]:
    """The key attributes of an item (typed or plain, same form out as in)."""
    return {name: item[name] for name in key_names}


def key_id(key: Mapping[str, Any]) -> str:
    """The canonical id of a key, typed or plain: one id per DynamoDB key (issue 11).

    Numbers by DynamoDB's value (``10`` and ``10.0`` are one key, all 38 digits count), binary
    by its bytes. Used wherever destination keys are compared (the applier's key diffs, owner
    stamps), so two spellings of one key never plan two writes.
    """
    return key_text(key)


def _attr_size(value: Mapping[str, Any]) -> int:
    ((kind, inner),) = value.items()
    if kind in ("S",):
        return len(str(inner).encode())
    if kind == "N":
        return len(str(inner)) // 2 + 2
    if kind == "B":
        return len(bytes(inner))
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(len(s.encode()) for s in inner)
    if kind == "NS":
        return sum(len(n) // 2 + 2 for n in inner)
    if kind == "BS":
        return sum(len(bytes(b)) for b in inner)
    if kind == "L":
        return 3 + sum(1 + _attr_size(v) for v in inner)
    # "M"
    return 3 + sum(len(k.encode()) + 1 + _attr_size(v) for k, v in inner.items())


def typed_size(item: Mapping[str, Any]) -> int:
    """Approximate DynamoDB size in bytes of a typed item (names + values), per AWS's rules."""
    return sum(len(name.encode()) + _attr_size(value) for name, value in item.items())


def _json_default(value: object) -> Any:
    if isinstance(value, Decimal):
        if value == value.to_integral_value():
            return int(value)
        # A float only where it is the same number; else the exact text (38 digits).
        as_float = float(value)
        return as_float if Decimal(repr(as_float)) == value else str(value)
    if isinstance(value, set | frozenset):
        # str() of boto3's Binary is bytes, not text: order binary sets by their bytes.
        return sorted(value, key=lambda v: raw_bytes(v).hex() if is_binary(v) else str(v))
    if isinstance(value, Binary):
        return bytes(value.value).hex()  # type: ignore[attr-defined]
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def to_json(value: Any) -> str:
    """JSON text of a plain or typed item (Decimal, sets and binary made JSON-safe)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_json_default)
