"""The cutover's drain with a Kinesis change source waits for the watermark (issue 14 item 3)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

from livemigrate.clock import FakeClock
from livemigrate.control import ControlStore
from livemigrate.cutover import CutoverOptions, Drain


class ShardStore:
    """What the drain reads: the consumer's shard items (and a heartbeat that says drained)."""

    def __init__(self, shards: dict[str, dict[str, Any]]) -> None:
        self.shards = shards

    def query(self, prefix: str) -> Iterator[tuple[str, dict[str, Any]]]:
        assert prefix == "SHARD#source#"
        yield from ((f"{prefix}{k}", v) for k, v in self.shards.items())

    def get(self, sk: str) -> dict[str, Any]:
        # A DynamoDB Streams drain would pass on this report alone: read past `since`, nothing
        # behind, no lag.
        return {"read_from": 10**12, "records_behind": 0, "lag_seconds": 0}


def drain(shards: dict[str, dict[str, Any]], margin: float | None) -> Drain:
    store = cast(ControlStore, ShardStore(shards))
    options = CutoverOptions(checked_writes=True, consumer_margin=0.2, watermark_margin=margin)
    return Drain(store, "CONSUMER#source", options, FakeClock(1000.0), lambda _: None)


def test_the_drain_waits_for_every_open_shard_to_be_caught_up_past_the_fence_and_margin() -> None:
    fence = 1000.0
    shards: dict[str, dict[str, Any]] = {
        "a": {"caught_up_at": 1006.0, "read_from": 1006.0, "behind": 0},
        # read past the fence, but its last read that found it at its end was before
        "b": {"caught_up_at": 1003.0, "read_from": 1006.0, "behind": 0, "lease_owner": "w"},
        "old": {"finished": True},
    }
    kinesis = drain(shards, margin=5.0)
    since = fence + kinesis.quiet_after()
    assert since == 1005.0  # the delivery margin, not the 0.2 s stream margin
    assert not kinesis.drained(since)
    shards["b"]["caught_up_at"] = 1005.5
    assert kinesis.drained(since)


def test_a_shard_never_caught_up_holds_the_drain_back() -> None:
    assert not drain({"a": {"read_from": 2000.0, "behind": 0}}, margin=0.0).drained(1000.0)
