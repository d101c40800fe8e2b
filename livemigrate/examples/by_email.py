"""A by-email lookup table: the destination key comes from an attribute that moves between items.

Each user item (``pk`` = ``user|<id>``) with an ``email`` produces one destination item keyed by
that address (``pk`` = ``email|<address>``, ``sk`` = ``user``); a user without an email produces
none, and an address without "@" is refused (a dead letter). When one user gives up an address
and another takes it, the destination key passes from one source item to another: their stream
records may be on different shards (ARCHITECTURE.md rule 12, tests/unit/test_consumer_handoff.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def transform(item: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """One user → its email lookup item, or nothing without an email."""
    email = item.get("email")
    if email is None:
        return
    if "@" not in str(email):
        raise ValueError(f"not an email address: {email!r}")
    extra = {k: v for k, v in item.items() if k not in ("pk", "sk", "email")}
    yield {"pk": f"email|{email}", "sk": "user", "user": item["pk"], **extra}
