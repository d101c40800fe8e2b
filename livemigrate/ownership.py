"""Which source item owns a destination key (ARCHITECTURE.md rule 12).

DynamoDB orders the stream records of one item (in its shard lineage), not the records of two
items on different shards. So when a destination key passes from one source item to another
(a by-email table: u1 gives up e@x, then u2 takes it), comparing their sequence numbers decides
nothing. Every forward destination item therefore records its owner, ``_lm_src`` = ``owner_id``
of its source item's key, and:

- a removal derived from u's old image removes a key only while u owns it;
- a put from u over a key another item v owns reads v from the source: v absent or no longer
  mapping to the key hands the key over (conditioned on v's item being unchanged); v still
  mapping to it while u does too is a collision, dead-lettered and counted here.

The rare path of issue 10 item 8 lives here too: when an item's new image fails the transform,
the keys it owned until then (its old image's) are remembered under ``OWNED#<hash of owner>``,
so that the next record, whose old image fails the transform as well, still finds them.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from livemigrate.counters import Counter
from livemigrate.items import TypedItem, key_id
from livemigrate.keys import OWNED_PREFIX

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

    from livemigrate.control import ControlStore

COLLISIONS_COUNTER: Final[Counter] = "collisions_dead_lettered"

# A source item's current typed item by its key (consistent read), or None when it is absent.
SourceReader = Callable[[TypedItem], TypedItem | None]


def owner_id(source_key: Mapping[str, Any]) -> str:
    """The canonical text of a source item's typed key, stored as ``_lm_src``."""
    # One place to follow ``livemigrate.items.key_id`` (and its canonical form of numbers).
    return key_id(dict(source_key))


def key_from_id(text: str) -> TypedItem | None:
    """The typed key an ``owner_id`` (``key_id`` of a typed key) was made from; None if the text
    cannot be read back."""
    try:
        parsed = json.loads(text)
    except ValueError:
        return None
    if not isinstance(parsed, dict) or not parsed:
        return None
    key: TypedItem = {}
    for name, value in parsed.items():
        typed = _scalar(value)
        if typed is None:
            return None
        key[name] = typed
    return key


def _scalar(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, dict) or len(value) != 1:
        return None
    ((kind, inner),) = value.items()
    if kind in ("S", "N") and isinstance(inner, str | int):
        return {kind: str(inner)}
    if kind == "B" and isinstance(inner, str):
        try:  # the canonical form writes binary as base64 (livemigrate.values)
            return {"B": base64.b64decode(inner, validate=True)}
        except ValueError:
            return None
    return None


@dataclass(frozen=True)
class TableReader:
    """A ``SourceReader`` on a DynamoDB table (consistent reads)."""

    client: DynamoDBClient
    table: str

    def __call__(self, key: TypedItem) -> TypedItem | None:
        got = self.client.get_item(TableName=self.table, Key=dict(key), ConsistentRead=True)
        return got.get("Item")


class OwnershipRecords:
    """The control-table side of ownership: keys owned before a failing version, collisions.

    Parameters
    ----------
    store:
        The migration's control store.
    """

    def __init__(self, store: ControlStore) -> None:
        self.store = store

    @staticmethod
    def _sk(owner: str) -> str:
        # Source keys can be long; the sort key holds a digest, the item holds the owner.
        return OWNED_PREFIX + hashlib.sha256(owner.encode()).hexdigest()[:40]

    def remember(self, owner: str, keys: Sequence[TypedItem], seq: str) -> None:
        """Record the destination keys ``owner`` owns as of the record at ``seq``."""
        self.store.put(
            # key_id's canonical form, which key_from_id reads back (to_json wrote binary as
            # hex, read back as base64: a binary key came back as other bytes)
            self._sk(owner),
            {"owner": owner, "keys": [key_id(k) for k in keys], "seq": seq},
        )

    def owned(self, owner: str) -> list[TypedItem]:
        """The keys last remembered for ``owner`` (none when nothing failed for it)."""
        held = self.store.get(self._sk(owner)) or {}
        keys = [key_from_id(str(text)) for text in held.get("keys", [])]
        return [key for key in keys if key is not None]

    def count_collision(self) -> None:
        """One record dead-lettered as a collision (``livemigrate status`` shows the counter)."""
        self.store.add_metrics({COLLISIONS_COUNTER: 1})
