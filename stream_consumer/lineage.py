"""Shard lineage (rule 3): a child shard is read only after every parent is finished.

Pure functions over what DescribeStream lists and what the control table records, so the
decision is tested without any service. A parent that DescribeStream no longer lists was trimmed
(24 h retention): if we had started it and not finished it, records may be lost, and the caller
reports that loudly; either way the child may proceed, because nothing more can be read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from stream_consumer.source import ShardInfo


@dataclass(frozen=True)
class Lineage:
    """Which shards may be read now, and which parents vanished unfinished."""

    readable: frozenset[str]  # listed, not finished, every parent finished or trimmed
    waiting: frozenset[str]  # listed, not finished, some parent still being read
    lost_parents: frozenset[str]  # trimmed before we finished them: possible data loss


def is_finished(state: Mapping[str, Any] | None) -> bool:
    return bool(state and state.get("finished"))


def resolve(listed: Iterable[ShardInfo], states: Mapping[str, Mapping[str, Any]]) -> Lineage:
    """Decide what may be read, from the listing and the recorded SHARD# items.

    Parameters
    ----------
    listed:
        Shards DescribeStream returned (all pages).
    states:
        Recorded shard items by shard id (``finished`` is what matters here).
    """
    shards = {s.shard_id: s for s in listed}
    readable: set[str] = set()
    waiting: set[str] = set()
    lost: set[str] = set()
    for shard in shards.values():
        if is_finished(states.get(shard.shard_id)):
            continue
        blocked = False
        for parent in shard.parents:
            if parent not in shards:
                # Trimmed from the listing. Only a parent we had recorded and not finished
                # means records we never read; an unknown parent predates this consumer.
                if parent in states and not is_finished(states[parent]):
                    lost.add(parent)
                continue
            if not is_finished(states.get(parent)):
                blocked = True
        (waiting if blocked else readable).add(shard.shard_id)
    return Lineage(frozenset(readable), frozenset(waiting), frozenset(lost))
