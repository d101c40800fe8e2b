"""The flag and the client library with an in-memory flag store and a fake clock."""

from __future__ import annotations

import pytest

from livemigrate.client import ActiveTable, FenceTimeout
from livemigrate.clock import FakeClock
from livemigrate.cutover import drained, shards_drained
from livemigrate.flag import Flag
from tests.support.flags import INITIAL, MemoryFlags


def test_active_table_is_cached_for_ttl_then_read_again() -> None:
    clock = FakeClock()
    flags = MemoryFlags(INITIAL)
    active = ActiveTable(flags, ttl=1.0, clock=clock)
    assert active.active_table() == "orders"
    flags.flag = INITIAL.flipped("destination", clock.now())
    clock.advance(0.9)
    assert active.active_table() == "orders"  # still cached
    assert flags.reads == 1
    clock.advance(0.1)
    assert active.active_table() == "orders_v2"
    assert flags.reads == 2


def test_writer_waits_out_a_fence_and_writes_to_the_new_table() -> None:
    clock = FakeClock()
    fenced = INITIAL.fence(clock.now(), 30)
    flags = MemoryFlags(fenced)
    flags.script[5] = fenced.flipped("destination", clock.now() + 0.2)
    active = ActiveTable(flags, ttl=1.0, poll=0.05, clock=clock)
    written = active.write(lambda table: table)
    assert written == "orders_v2"
    assert flags.reads == 5
    assert clock.now() == pytest.approx(1_000_000.0 + 4 * 0.05)


def test_an_expired_fence_no_longer_holds_writers() -> None:
    clock = FakeClock()
    flags = MemoryFlags(INITIAL.fence(clock.now() - 60, 30))  # a cutover that crashed
    with ActiveTable(flags, clock=clock).writing() as table:
        assert table == "orders"


def test_writer_gives_up_after_max_wait() -> None:
    clock = FakeClock()
    flags = MemoryFlags(INITIAL.fence(clock.now(), 3600))
    with pytest.raises(FenceTimeout):
        ActiveTable(flags, poll=0.5, max_wait=2.0, clock=clock).write(lambda t: t)


def test_flag_transitions_keep_tables_and_clear_the_fence() -> None:
    fenced = INITIAL.fence(100.0, 10)
    assert fenced.is_fenced(105.0) and not fenced.is_fenced(110.0)
    flipped = fenced.flipped("destination", 101.0)
    assert (flipped.table, flipped.fenced, flipped.flipped_at) == ("orders_v2", False, 101.0)
    assert flipped.flipped("source", 102.0).table == "orders"
    assert Flag.from_dict(flipped.to_dict()) == flipped


def test_drained_needs_a_fresh_heartbeat_with_nothing_behind() -> None:
    assert drained({"heartbeat_at": 10, "records_behind": 0, "lag_seconds": 0}, 9, 1.0)
    assert not drained({"heartbeat_at": 8, "records_behind": 0, "lag_seconds": 0}, 9, 1.0)
    assert not drained({"heartbeat_at": 10, "records_behind": 3, "lag_seconds": 0}, 9, 1.0)
    assert not drained({"heartbeat_at": 10, "records_behind": 0, "lag_seconds": 4}, 9, 1.0)
    assert not drained(None, 9, 1.0)


def test_drained_counts_from_when_the_reads_were_sent_not_from_the_heartbeat() -> None:
    # A slow apply: the heartbeat is fresh, but what it reports was read before `since`.
    slow = {"heartbeat_at": 12, "read_from": 8, "records_behind": 0, "lag_seconds": 0}
    assert not drained(slow, 9, 1.0)
    assert drained({**slow, "read_from": 9.5}, 9, 1.0)


def test_every_unfinished_shard_must_be_held_and_read_after_since() -> None:
    # Two processes share a consumer: each reports its own shards on their lease items.
    now = 100.0
    mine = {"lease_owner": "a", "lease_expires": now + 10, "read_from": 95, "behind": 0}
    theirs = {**mine, "lease_owner": "b"}
    done = {"finished": True}
    assert shards_drained([mine, theirs, done], 90, 1.0, now)
    assert shards_drained([], 90, 1.0, now)
    # One process is still reading an older page, has a backlog, lags, or is dead.
    assert not shards_drained([mine, {**theirs, "read_from": 80}], 90, 1.0, now)
    assert not shards_drained([mine, {**theirs, "behind": 1000}], 90, 1.0, now)
    assert not shards_drained([mine, {**theirs, "lag_seconds": 7}], 90, 1.0, now)
    assert not shards_drained([mine, {**theirs, "lease_expires": now - 1}], 90, 1.0, now)
    assert not shards_drained([mine, {"finished": False}], 90, 1.0, now)
