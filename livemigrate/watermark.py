"""The watermark of a consumer's shards: a time before which no record can still arrive.

The reasoning is in ``stream_consumer.watermark`` (rule 15); this pure part lives in the core so
that the cutover's drain can use it without depending on the engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def watermark_of(shards: Mapping[str, Mapping[str, Any]], margin: float) -> float | None:
    """The watermark (epoch seconds) from shard items, or None when there is none yet.

    ``min(caught_up_at of every unfinished shard) - margin``; infinite once every shard is
    finished; None while a shard has never been read to its end (or there are no shards).
    """
    open_shards = [s for s in shards.values() if not s.get("finished")]
    if not shards:
        return None
    if not open_shards:
        return float("inf")  # every shard is read to its end: nothing more can arrive
    times = [s.get("caught_up_at") for s in open_shards]
    if any(t is None for t in times):
        return None
    return min(float(t) for t in times if t is not None) - margin
