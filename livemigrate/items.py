"""Item conversions between DynamoDB's typed form ("AttributeValue" maps) and plain Python.

Plain items are what boto3's TypeDeserializer gives: numbers are ``Decimal``, binary is
``Binary``, sets are ``set``. Transforms see and return plain items.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from decimal import Context, Decimal
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


# -- sizes (DynamoDB's rules) -------------------------------------------------------------------
def item_size(item: Mapping[str, Any]) -> int:
    """Bytes DynamoDB counts for a typed item (``{"name": {"S": "..."}}``): the UTF-8 length of
    its attribute names plus the size of its values.

    Every transform output and every accounted put and scanned item is sized, so the common
    cases (ASCII text, plain integers) take the short path.
    """
    size = 0
    for name, value in item.items():
        size += _text_size(name) + value_size(value)
    return size


def value_size(value: Mapping[str, Any]) -> int:
    """Bytes of one typed value: strings their UTF-8 bytes, numbers 1 byte per two significant
    digits plus 1, binary its bytes, booleans and null 1, lists and maps 3 plus 1 per element
    plus their contents, sets their elements."""
    for kind, raw in value.items():  # a typed value has one entry
        if kind == "S":
            return _text_size(str(raw))
        if kind == "N":
            return number_size(str(raw))
        try:
            sizer = _SIZERS[kind]
        except KeyError:
            raise ValueError(f"not a DynamoDB type: {kind!r}") from None
        return sizer(raw)
    raise ValueError("an empty typed value")


def number_size(text: str) -> int:
    """1 byte per two significant digits, plus 1 (plus 1 for a negative number)."""
    if text.isdigit():  # a plain integer (most numbers): no Decimal
        significant = len(text.strip("0")) or 1
    else:
        number = Decimal(text)
        # normalize() in a context as wide as the number: the default one (28 digits) rounded
        # a 38-digit number and under-charged it
        wide = Context(prec=max(1, len(number.as_tuple().digits)), Emin=-999_999, Emax=999_999)
        digits = number.normalize(wide).as_tuple().digits
        significant = len(digits) if any(digits) else 1
    return -(-significant // 2) + 1 + (1 if text.startswith("-") else 0)


def _text_size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())


_SIZERS: dict[str, Callable[[Any], int]] = {
    "B": lambda raw: len(raw_bytes(raw)),
    "BOOL": lambda _: 1,
    "NULL": lambda _: 1,
    "SS": lambda raw: sum(_text_size(str(s)) for s in raw),
    "NS": lambda raw: sum(number_size(str(n)) for n in raw),
    "BS": lambda raw: sum(len(raw_bytes(b)) for b in raw),
    "L": lambda raw: 3 + sum(1 + value_size(v) for v in raw),
    "M": lambda raw: 3 + sum(1 + _text_size(k) + value_size(v) for k, v in raw.items()),
}


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
