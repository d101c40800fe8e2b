"""Typed keys and attribute values as stored text (checkpoints, split bounds, hot keys).

JSON of DynamoDB's typed form, with binary values written as ``{"$hex": "..."}`` so that
they survive the round trip into ``ExclusiveStartKey``.
"""

from __future__ import annotations

import json
from typing import Any


def _default(value: object) -> Any:
    if isinstance(value, bytes | bytearray):
        return {"$hex": bytes(value).hex()}
    raise TypeError(f"not a key value: {type(value).__name__}")


def _hook(obj: dict[str, Any]) -> Any:
    if set(obj) == {"$hex"}:
        return bytes.fromhex(obj["$hex"])
    return obj


def dump_json(value: Any) -> str:
    """Stable text (sorted, compact) of a typed key, attribute value or list of them."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_default)


def load_json(text: str) -> Any:
    return json.loads(text, object_hook=_hook)


def dump_key(key: dict[str, Any] | None) -> str | None:
    """A typed key as stored text (None stays None: no checkpoint yet)."""
    return None if key is None else dump_json(key)


def load_key(text: Any) -> dict[str, Any] | None:
    return None if text in (None, "") else dict(load_json(str(text)))
