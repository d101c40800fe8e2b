"""Hot-key splits in the control table: creating them, and finishing a jump after a crash.

Order of writes (each step is safe to repeat):

1. the page that revealed the hot key is fully written;
2. every SPLIT item is put (conditionally; each carries the full list of bounds), in a
   transaction that also checks that the worker still holds an unexpired lease on the segment,
   inside the worker's fence: a stale worker (its lease taken over or expired) creates no split,
   so no split can appear after the plan is complete (issue 10, item 1);
3. the segment's checkpoint jumps to {hash: hot key, range: its last sort key} and the key is
   added to ``hot_keys_skipped`` (one conditional write with the lease renewal).

A crash between 2 and 3 leaves split items whose key is not in ``hot_keys_skipped``: the next
owner of the segment re-creates any missing split from the stored bounds and then jumps.
Everything before the jump was written in step 1, everything after it is in the splits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from backfill.hotkey import Attr, attr_id, split_bounds
from backfill.keys import dump_json, load_json
from backfill.lease import UnitLease
from backfill.plan import PENDING, split_sk
from livemigrate import keys
from livemigrate.counters import fresh_unit_counters
from livemigrate.items import to_plain


@dataclass(frozen=True)
class Jump:
    """Where a segment's Scan resumes to skip a hot key (its last sort key)."""

    hot: Attr
    upper: Attr

    def key(self, hash_name: str, range_name: str) -> dict[str, Any]:
        return {hash_name: self.hot, range_name: self.upper}


def _display(hot: Attr) -> str:
    return str(to_plain({"k": hot})["k"])


def create_splits(
    lease: UnitLease, segment: int, hot: Attr, *, lower: Attr, upper: Attr, ways: int
) -> Jump:
    """Put the SPLIT items covering (lower, upper] of ``hot``; returns the segment's jump.

    Raises
    ------
    LeaseLost
        When ``lease`` (on the segment) is no longer held: no split is created.
    """
    existing = [sk for sk, _ in lease.store.query(keys.split_prefix(segment))]
    base = 1 + max((int(sk.rsplit("#", 1)[1]) for sk in existing), default=-1)
    bounds = split_bounds(lower, upper, ways)
    _put_all(lease, segment, hot, base, bounds)
    return Jump(hot, upper)


def _put_all(lease: UnitLease, segment: int, hot: Attr, base: int, bounds: list[Attr]) -> None:
    text = dump_json(bounds)
    lease.put_new(
        {
            split_sk(segment, base + i): {
                "state": PENDING,
                "segment": segment,
                "hot_key": _display(hot),
                "hot_key_id": attr_id(hot),
                "lower": dump_json(bounds[i]),
                "upper": dump_json(bounds[i + 1]),
                "index": i,
                "base": base,
                "bounds": text,
                "checkpoint": None,
                **fresh_unit_counters(),
            }
            for i in range(len(bounds) - 1)
        }
    )


def unfinished_jumps(lease: UnitLease, segment: int, skipped: set[str]) -> list[Jump]:
    """Splits of ``segment`` whose jump was not recorded (a crash); missing splits re-created."""
    seen: dict[str, dict[str, Any]] = {}
    for _, item in lease.store.query(keys.split_prefix(segment)):
        key_id = str(item["hot_key_id"])
        if key_id not in skipped:
            seen.setdefault(key_id, item)
    jumps = []
    for key_id, item in seen.items():
        hot = load_json(key_id)
        bounds = load_json(str(item["bounds"]))
        _put_all(lease, segment, hot, int(item["base"]), bounds)
        jumps.append(Jump(hot, bounds[-1]))
    return jumps
