"""Dead letters (rule 6): what failed, why, and the raw input, in the control table.

Work continues past a dead letter; the count is visible in ``livemigrate status``, and cutover
refuses while any is unacknowledged.
"""

from __future__ import annotations

import time
import uuid
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from boto3.dynamodb.types import Binary

from livemigrate.control import ControlStore
from livemigrate.items import to_json

Origin = Literal["backfill", "stream", "search", "verify", "reverse"]

# The dead letter itself must fit in a DynamoDB item; the raw input is compressed and, if it
# is still too large (an oversized source item), cut: the source table still holds the original.
_MAX_RAW = 300 * 1024


@dataclass(frozen=True)
class DeadLetter:
    id: str
    origin: str
    reason: str
    key: str
    raw: str
    raw_truncated: bool
    at: float
    acknowledged: bool


class DeadLetters:
    """Write, count, list and acknowledge one migration's dead letters."""

    PREFIX = "DLQ#"

    def __init__(self, store: ControlStore) -> None:
        self.store = store

    def add(
        self, origin: Origin, reason: str, raw: Mapping[str, Any] | str, key: Mapping[str, Any]
    ) -> str:
        """Record one dead letter; returns its id."""
        text = raw if isinstance(raw, str) else to_json(raw)
        packed = zlib.compress(text.encode())
        truncated = len(packed) > _MAX_RAW
        if truncated:
            packed = zlib.compress(text.encode()[: _MAX_RAW * 2])[:_MAX_RAW]
        now = time.time()
        letter_id = f"{self.PREFIX}{now:017.6f}#{uuid.uuid4().hex[:12]}"
        self.store.put(
            letter_id,
            {
                "origin": origin,
                "reason": reason[:2000],
                "key": to_json(key),
                "raw_z": Binary(packed),
                "raw_truncated": truncated,
                "at": str(now),
                "acknowledged": False,
            },
        )
        self.store.add_metrics({f"dead_letters_{origin}": 1})
        return letter_id

    def count(self) -> int:
        return self.store.count(self.PREFIX)

    def unacknowledged(self) -> int:
        return sum(1 for letter in self.list() if not letter.acknowledged)

    def list(self) -> Iterator[DeadLetter]:
        for sk, item in self.store.query(self.PREFIX):
            raw_z = item.get("raw_z")
            raw = ""
            if isinstance(raw_z, Binary):
                try:
                    raw = zlib.decompress(raw_z.value).decode()  # type: ignore[attr-defined]
                except zlib.error:
                    raw = "<truncated>"
            yield DeadLetter(
                id=sk,
                origin=str(item.get("origin", "")),
                reason=str(item.get("reason", "")),
                key=str(item.get("key", "")),
                raw=raw,
                raw_truncated=bool(item.get("raw_truncated", False)),
                at=float(item.get("at", 0)),
                acknowledged=bool(item.get("acknowledged", False)),
            )

    def acknowledge_all(self, by: str) -> int:
        n = 0
        for letter in self.list():
            if not letter.acknowledged:
                self.store.update(letter.id, {"acknowledged": True, "acknowledged_by": by})
                n += 1
        return n
