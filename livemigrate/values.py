"""DynamoDB's own value semantics, in one place (ARCHITECTURE.md rule 14).

Every part of livemigrate that compares, keys, hashes or keeps items goes through here: verify's
digests, the applier's key diffs (``livemigrate.items.key_id``), search document ids and dead
letters. Two representations:

- the **canonical form** of a typed value: DynamoDB JSON with every choice DynamoDB does not
  preserve taken away. Numbers are exact decimals of up to 38 significant digits, normalised the
  way DynamoDB stores them (``10``, ``10.0`` and ``1E+1`` are one number; leading and trailing
  zeroes trimmed; ``-0`` is ``0``); string, number and binary sets are sorted and without
  duplicates; binary is base64 of the bytes (``bytes``, ``bytearray`` and boto3's ``Binary``
  alike); maps and lists nest; empty strings and empty binary, ``NULL`` and ``BOOL`` are kept.
  Two values are the same DynamoDB value exactly when their canonical forms are equal.
- **DynamoDB JSON** as received (``to_dynamodb_json``): numbers keep their text, sets their
  order, binary is base64. Dead letters keep their input this way, so ``dead-letters show``
  prints it exactly and a replay parses it back to the same typed item.

Python's default decimal context keeps 28 digits; DynamoDB keeps 38 (issue 11). Nothing here
uses the default context: numbers are parsed exactly and checked against DynamoDB's limits.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from decimal import Context, Decimal, InvalidOperation
from typing import Any

from boto3.dynamodb.types import Binary, TypeSerializer

from livemigrate.versioning import user_attributes

MAX_DIGITS = 38
# DynamoDB's range: 1E-130 to 9.9999999999999999999999999999999999999E+125 in magnitude.
MIN_EXPONENT = -130
MAX_EXPONENT = 125

TypedValue = dict[str, Any]

_serializer = TypeSerializer()


def number_text(value: object) -> str:
    """The canonical text of a DynamoDB number: exact, normalised, plain notation.

    Raises
    ------
    ValueError
        When the value is not a number DynamoDB can hold (not finite, more than 38 significant
        digits, or out of its exponent range).
    """
    try:
        number = Decimal(str(value))
    except InvalidOperation as exc:
        raise ValueError(f"{value!r} is not a number") from exc
    if not number.is_finite():
        raise ValueError(f"{value!r} is not a finite number")
    if number.is_zero():
        return "0"
    # Trailing zeroes do not count (DynamoDB trims them): strip them exactly, no rounding.
    exact = Context(prec=len(number.as_tuple().digits), Emin=-999_999, Emax=999_999)
    normal = number.normalize(exact)
    significant = len(normal.as_tuple().digits)
    if significant > MAX_DIGITS:
        raise ValueError(
            f"{value!r} has {significant} significant digits; DynamoDB keeps at most {MAX_DIGITS}"
        )
    magnitude = normal.adjusted()
    if not MIN_EXPONENT <= magnitude <= MAX_EXPONENT:
        raise ValueError(f"{value!r} is outside DynamoDB's number range (1E-130 to 1E+126)")
    return format(normal, "f")


def raw_bytes(value: object) -> bytes:
    """The bytes of a binary value as boto3 gives it (``bytes``, ``bytearray``, ``Binary``)."""
    if isinstance(value, Binary):
        return bytes(value.value)  # type: ignore[attr-defined]
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"not a binary value: {type(value).__name__}")


def is_binary(value: object) -> bool:
    """Whether a plain value is DynamoDB binary (boto3's ``Binary`` is not a bytes subclass)."""
    return isinstance(value, Binary | bytes | bytearray)


def _b64(value: object) -> str:
    return base64.b64encode(raw_bytes(value)).decode()


def _binary_key(value: object) -> bytes:
    return raw_bytes(value)


_CANONICAL: dict[str, Callable[[Any], Any]] = {
    "S": str,
    "N": number_text,
    "B": _b64,
    "BOOL": bool,
    "NULL": lambda _: True,
    "SS": lambda v: sorted(set(v)),
    "NS": lambda v: sorted({number_text(n) for n in v}),
    "BS": lambda v: [_b64(b) for b in sorted({_binary_key(b) for b in v})],
    "L": lambda v: [canonical_value(x) for x in v],
    "M": lambda v: {str(k): canonical_value(x) for k, x in sorted(v.items())},
}


def canonical_value(value: Mapping[str, Any]) -> TypedValue:
    """The canonical form of one typed value (``{"N": "10.0"}`` -> ``{"N": "10"}``)."""
    ((kind, inner),) = value.items()
    try:
        convert = _CANONICAL[kind]
    except KeyError:
        raise ValueError(f"unknown DynamoDB type {kind!r}") from None
    return {kind: convert(inner)}


def typed(value: object) -> TypedValue:
    """A key value as DynamoDB types it: typed values pass through, plain ones are serialised.

    Meant for key attributes (S, N or B): a plain map that looks typed (``{"S": ...}``) would
    pass through as typed.
    """
    if isinstance(value, Mapping) and len(value) == 1 and next(iter(value)) in _CANONICAL:
        return dict(value)
    return dict(_serializer.serialize(value))


def canonical_item(item: Mapping[str, Any]) -> dict[str, TypedValue]:
    """The canonical form of a typed item (attribute names sorted)."""
    return {str(name): canonical_value(item[name]) for name in sorted(item)}


# One encoder for every call (json.dumps builds one per call when given options); an owner
# stamp is made this way for every backfilled item. encode() keeps no state between calls.
_CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def canonical_text(item: Mapping[str, Any]) -> str:
    """Stable JSON text of a typed item's canonical form: equal exactly for equal items."""
    return _CANONICAL_JSON.encode(canonical_item(item))


def key_text(key: Mapping[str, Any]) -> str:
    """The canonical id of a key, typed (``{"pk": {"N": "10"}}``) or plain (``{"pk": 10}``).

    Key attributes are scalars (S, N or B), so a mapping value is always the typed form: the
    two spellings of one key give one id.
    """
    return canonical_text({name: typed(value) for name, value in key.items()})


def same_value(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two typed values are one DynamoDB value."""
    return canonical_value(a) == canonical_value(b)


# -- DynamoDB JSON as received ----------------------------------------------------------------
def _out_binary(value: object) -> str:
    # A Lambda event already carries base64 text; boto3's client gives bytes.
    return value if isinstance(value, str) else _b64(value)


_TO_JSON: dict[str, Callable[[Any], Any]] = {
    "B": _out_binary,
    "BS": lambda v: [_out_binary(b) for b in v],
    "SS": list,
    "NS": lambda v: [str(n) for n in v],
    "N": str,
    "L": lambda v: [value_to_json(x) for x in v],
    "M": lambda v: {str(k): value_to_json(x) for k, x in v.items()},
}

_FROM_JSON: dict[str, Callable[[Any], Any]] = {
    "B": base64.b64decode,
    "BS": lambda v: [base64.b64decode(b) for b in v],
    "L": lambda v: [value_from_json(x) for x in v],
    "M": lambda v: {k: value_from_json(x) for k, x in v.items()},
}


def value_to_json(value: Mapping[str, Any]) -> TypedValue:
    """One typed value as DynamoDB JSON (binary as base64), nothing else changed."""
    ((kind, inner),) = value.items()
    convert = _TO_JSON.get(kind)
    return {kind: inner if convert is None else convert(inner)}


def value_from_json(value: Mapping[str, Any]) -> TypedValue:
    """DynamoDB JSON back to the typed value boto3's client takes (binary as bytes)."""
    ((kind, inner),) = value.items()
    convert = _FROM_JSON.get(kind)
    return {kind: inner if convert is None else convert(inner)}


def to_dynamodb_json(item: Mapping[str, Any]) -> dict[str, TypedValue]:
    """A typed item as DynamoDB JSON, exactly as it was (number text and set order kept)."""
    return {str(name): value_to_json(value) for name, value in item.items()}


def from_dynamodb_json(item: Mapping[str, Any]) -> dict[str, TypedValue]:
    """DynamoDB JSON back to a typed item boto3 accepts."""
    return {str(name): value_from_json(value) for name, value in item.items()}


def canonical_bytes(item: Mapping[str, Any]) -> bytes:
    """Stable bytes of a typed item: its canonical form (numbers by DynamoDB's value with all
    38 digits, sets as sets, binary by its bytes), livemigrate's ``_lm_*`` attributes stripped.
    Verify's digests and the reverse consumer's round-trip check compare items by it."""
    return canonical_text(user_attributes(item)).encode()
