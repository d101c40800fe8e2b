"""From a destination item to its search document: the id, the default body, the user hook.

- The document id comes from the item's key attributes only, so every event of one item lands
  on one document whatever the item holds. It is stable (key names sorted, numbers normalised
  by DynamoDB's rules with all 38 digits, ``livemigrate.values``) and URL-safe: each value is
  percent-encoded with only ``-._`` left bare, values are joined with ``~``, and an id longer
  than Elasticsearch's 512-byte limit becomes ``~`` + SHA-256 of the readable form (a readable
  id never starts with ``~``, so the two cannot collide).
- The default document is the item itself, JSON-safe and exact: a number is a JSON integer when
  it is one within Elasticsearch's ``long`` range, a JSON float when a double holds exactly that
  decimal, and otherwise its exact decimal text (a 38-digit number is never rounded); sets ->
  sorted lists (numbers by value), binary -> base64 text, without livemigrate's reserved
  ``_lm_*`` attributes.
- A user hook ``package.module:function`` maps the plain item to its document, or to None when
  the item must not be indexed (an existing document is then deleted).
"""

from __future__ import annotations

import base64
import hashlib
import importlib
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from livemigrate.errors import TransformLoadError
from livemigrate.items import to_plain
from livemigrate.values import canonical_value, is_binary, number_text, raw_bytes
from livemigrate.versioning import DELETE_ATTR, TOMBSTONE_ATTR, is_reserved, user_attributes

MAX_ID_BYTES = 512
Document = dict[str, Any]
DocumentHook = Callable[[dict[str, Any]], Mapping[str, Any] | None]


def document_id(keys: Mapping[str, Any]) -> str:
    """The document id of an item, from its typed key attributes (``{"pk": {"S": "a"}}``)."""
    parts = [_escape(_key_text(keys[n])) for n in sorted(keys)]
    readable = "~".join(parts)
    if len(readable) <= MAX_ID_BYTES:  # escaped: ASCII, one byte per character
        return readable
    return "~" + hashlib.sha256(readable.encode()).hexdigest()


# Every ASCII character but letters, digits and "-._" becomes %XX ("~" too: it only ever
# separates values); a table lookup is much faster than urllib's quote() on the hot path.
_ESCAPES = {
    c: f"%{c:02X}"
    for c in range(128)
    if not (chr(c).isascii() and chr(c).isalnum()) and chr(c) not in "-._"
}


def _escape(text: str) -> str:
    if text.isascii():
        return text.translate(_ESCAPES)
    return quote(text, safe="-._").replace("~", "%7E")


def _key_text(value: Mapping[str, Any]) -> str:
    if len(value) == 1 and "S" in value:  # most keys: a string is its own canonical form
        return str(value["S"])
    ((_kind, inner),) = canonical_value(value).items()
    return str(inner)  # S as is, N canonical (38 digits), B base64 of the bytes


_LONG = 1 << 63


def json_number(number: Decimal) -> int | float | str:
    """A DynamoDB number as JSON, never rounded (see the module docstring)."""
    if number == number.to_integral_value() and -_LONG <= number < _LONG:
        return int(number)
    as_float = float(number)
    if Decimal(repr(as_float)) == number:
        return as_float
    return number_text(number)


def json_safe(value: Any) -> Any:
    """A plain DynamoDB value (as boto3 deserialises it) as a JSON-compatible value."""
    if isinstance(value, Decimal):
        return json_number(value)
    if isinstance(value, set | frozenset):
        return _json_set(value)
    if is_binary(value):
        return _b64(value)
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _json_set(value: set[Any] | frozenset[Any]) -> list[Any]:
    # Number sets sort by value, string and binary sets by text.
    if all(isinstance(v, Decimal) for v in value):
        return [json_number(v) for v in sorted(value)]
    return sorted((json_safe(v) for v in value), key=str)


def typed_json(value: Mapping[str, Any]) -> Any:
    """A typed DynamoDB value (``{"N": "3"}``) straight to its JSON-safe form.

    Same result as ``json_safe(TypeDeserializer().deserialize(value))``, without building
    Decimals and sets first: the default document of every stream record goes through here.
    """
    ((kind, inner),) = value.items()
    if kind == "S":  # the commonest kinds first, without a table lookup and a call
        return inner
    if kind == "N":
        return _number(inner)
    return _TYPED[kind](inner)


# An integer of at most 18 digits is within Elasticsearch's long range whatever its digits.
_SHORT_INT = 18


def _number(text: str) -> int | float | str:
    digits = text[1:] if text[:1] == "-" else text
    if 0 < len(digits) <= _SHORT_INT and digits.isascii() and digits.isdigit():
        return int(text)  # what json_number gives for it, without building a Decimal
    return json_number(Decimal(text))


def _b64(raw: Any) -> str:
    return base64.b64encode(raw_bytes(raw)).decode()


_TYPED: dict[str, Callable[[Any], Any]] = {
    "S": lambda v: v,
    "BOOL": lambda v: v,
    "NULL": lambda v: None,
    "N": _number,
    "M": lambda v: {k: typed_json(x) for k, x in v.items()},
    "L": lambda v: [typed_json(x) for x in v],
    "SS": sorted,
    "NS": lambda v: [json_number(n) for n in sorted(Decimal(n) for n in v)],
    "B": _b64,
    "BS": lambda v: sorted(_b64(b) for b in v),
}


def default_document(item: Mapping[str, Any]) -> Document:
    """The plain item, JSON-safe, without the reserved ``_lm_*`` attributes."""
    return {k: json_safe(v) for k, v in user_attributes(item).items()}


def is_tombstone(typed_item: Mapping[str, Any] | None) -> bool:
    """Whether a destination item (typed) records a delete: a tombstone (rule 2), or an item
    marked just before the consumer deletes it (``_lm_del``, see livemigrate.replication)."""
    if not typed_item:
        return False
    return any(
        typed_item.get(name, {}).get("BOOL", False) for name in (TOMBSTONE_ATTR, DELETE_ATTR)
    )


def load_hook(spec: str | None) -> DocumentHook:
    """The document hook named ``package.module:function``; the default document when None."""
    if not spec:
        return default_document
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise TransformLoadError(
            f"search document hook {spec!r} is not 'package.module:function'",
            "give e.g. --document-hook mypkg.search:to_document",
        )
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise TransformLoadError(
            f"search document hook {spec!r} cannot be loaded: {exc}",
            "check the module is importable (on PYTHONPATH) and defines that function",
        ) from exc
    if not callable(fn):
        raise TransformLoadError(f"search document hook {spec!r} is not callable", "")
    hook: DocumentHook = fn
    return hook


def build_document(hook: DocumentHook, typed_item: Mapping[str, Any]) -> Document | None:
    """The document for a typed destination item, JSON-safe; None = not indexed.

    Raises
    ------
    ValueError
        When the hook returns something other than a mapping or None, or a reserved field.
    """
    if hook is default_document:  # the common case, without the plain round trip
        return {k: typed_json(v) for k, v in user_attributes(typed_item).items()}
    try:
        out = hook(to_plain(typed_item))
    except Exception as exc:  # user code: any failure is this item's dead letter
        raise ValueError(f"{type(exc).__name__}: {exc}") from exc
    if out is None:
        return None
    if not isinstance(out, Mapping):
        raise ValueError(f"document hook returned {type(out).__name__}, not a mapping or None")
    doc = {str(k): json_safe(v) for k, v in out.items()}
    reserved = [k for k in doc if is_reserved(k)]
    if reserved and hook is not default_document:
        raise ValueError(f"document hook returned reserved fields {reserved}")
    return doc
