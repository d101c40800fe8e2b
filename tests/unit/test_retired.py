"""Rule 13: late changes of a retired table are frozen, nothing else is (issue 10, item 5).

GIVEN a flag store in memory, a fake clock and stream records with DynamoDB's second-rounded
creation times; WHEN the flag is flipped (fenced or not) and flipped back; THEN exactly the
records that may have been made after the flip's ``frozen_after`` are frozen, the flag is read
again whenever a record is newer than the cached read, and the counts reach the control item.
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from livemigrate.clock import FakeClock
from livemigrate.flag import FlagView
from livemigrate.records import STREAM_TIME_PRECISION, StreamRecord
from livemigrate.retired import RetiredTable
from tests.support.flags import INITIAL, MemoryFlags


class RecordingStore:
    """The one control-table call ``RetiredTable.report`` makes, kept in memory."""

    def __init__(self) -> None:
        self.updates: list[tuple[str, dict[str, Any], dict[str, Any]]] = []

    def update(self, sk: str, values: dict[str, Any], *, add: dict[str, Any]) -> None:
        self.updates.append((sk, values, add))


def record(created: float, pk: str = "a") -> StreamRecord:
    keys = {"pk": {"S": pk}}
    return StreamRecord("REMOVE", keys, None, keys, "1".zfill(40), created)


def retired_table(flags: MemoryFlags, side: Any, clock: FakeClock) -> tuple[RetiredTable, Any]:
    store = RecordingStore()
    view = FlagView(flags, clock)
    return RetiredTable(view, side, store, "source"), store  # type: ignore[arg-type]


def test_nothing_is_frozen_before_a_cutover_a_ttl_delete_is_a_real_delete() -> None:
    clock = FakeClock()
    table, _ = retired_table(MemoryFlags(INITIAL), "source", clock)
    assert table.frozen([record(clock.now()), record(clock.now() + 5)]) == set()


def test_after_a_fenced_cutover_only_records_certainly_before_the_fence_are_applied() -> None:
    clock = FakeClock()
    fence = clock.now()
    flipped = INITIAL.fence(fence, 30).flipped("destination", fence + 3, frozen_after=fence)
    flags = MemoryFlags(flipped)
    table, _ = retired_table(flags, "source", clock)
    clock.advance(3600)  # an hour later the stale source copy expires (TTL)
    late_ttl_delete = record(clock.now())
    replayed = record(fence - STREAM_TIME_PRECISION)  # made (and applied) before the fence
    same_second = record(fence - 0.5)  # floored to the fence's second: may be after it
    assert table.frozen([replayed, same_second, late_ttl_delete]) == {1, 2}


def test_the_reverse_consumer_is_frozen_only_after_a_rollback() -> None:
    clock = FakeClock()
    cut = INITIAL.flipped("destination", clock.now())
    flags = MemoryFlags(cut)
    table, _ = retired_table(flags, "destination", clock)
    clock.advance(10)
    assert table.frozen([record(clock.now())]) == set()  # the application writes D: apply
    flags.flag = cut.flipped("source", clock.now())
    clock.advance(10)
    assert table.frozen([record(clock.now())]) == {0}  # D retired: its late change stays


def test_a_cached_flag_is_read_again_for_records_newer_than_the_read() -> None:
    clock = FakeClock()
    flags = MemoryFlags(INITIAL)
    table, _ = retired_table(flags, "source", clock)
    table.frozen([record(clock.now() - 10)])
    assert flags.reads == 1
    table.frozen([record(clock.now() - 10)])  # older than the cached read: cache is enough
    assert flags.reads == 1
    # The flip happens right after the read; a record made after it must see the flip.
    flags.flag = INITIAL.flipped("destination", clock.now())
    clock.advance(0.2)
    assert table.frozen([record(clock.now())]) == {0}
    assert flags.reads == 2


def test_frozen_records_are_counted_on_the_consumer_item() -> None:
    clock = FakeClock()
    table, store = retired_table(MemoryFlags(INITIAL), "source", clock)
    records = [record(1.0, "a"), record(2.0, "b"), record(3.0, "c")]
    table.report(records, {0, 2})
    ((sk, values, add),) = store.updates
    assert (sk, add) == ("CONSUMER#source", {"retired_writes": 2})
    assert values["retired_last_keys"] == ['{"pk":{"S":"a"}}', '{"pk":{"S":"c"}}']
    table.report(records, set())
    assert len(store.updates) == 1


@given(
    frozen_offset=st.floats(min_value=-5, max_value=5),
    made=st.floats(min_value=-10, max_value=10),
)
def test_a_change_made_after_frozen_after_is_never_applied(
    frozen_offset: float, made: float
) -> None:
    # The record's true time is `made`; DynamoDB Streams report it floored to the second.
    clock = FakeClock(1_000_000.0)
    frozen_after = clock.now() + frozen_offset
    flag = INITIAL.flipped("destination", clock.now(), frozen_after)
    table, _ = retired_table(MemoryFlags(flag), "source", clock)
    true_time = clock.now() + made
    frozen = table.frozen([record(float(math.floor(true_time)))]) == {0}
    if true_time >= frozen_after:
        assert frozen  # a change of the retired table: never applied
    if true_time < frozen_after - STREAM_TIME_PRECISION:
        assert not frozen  # certainly before the fence: drained, applied (replays harmless)
