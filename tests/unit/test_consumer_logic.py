"""Pure parts of the consumer: lineage, lease balancing, retention guard, scripted stream."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from livemigrate.clock import FakeClock
from livemigrate.items import to_typed
from stream_consumer.engine import Tuning, retention_level
from stream_consumer.leases import BalancePolicy, live_owner
from stream_consumer.lineage import resolve
from stream_consumer.metrics import Metrics
from stream_consumer.scripted import ScriptedStream, ScriptedTable
from stream_consumer.source import DataTrimmed, IteratorExpired, ShardInfo, raw_sequence

A, B, C, D = (
    ShardInfo("a", (), True),
    ShardInfo("b", ("a",)),
    ShardInfo("c", ("a",)),
    ShardInfo("d", ("b", "c")),
)


def test_children_wait_for_every_parent() -> None:
    lin = resolve([A, B, C, D], {})
    assert lin.readable == {"a"}
    assert lin.waiting == {"b", "c", "d"}
    lin = resolve([A, B, C, D], {"a": {"finished": True}, "b": {"finished": True}})
    assert lin.readable == {"c"}
    assert lin.waiting == {"d"}


def test_a_trimmed_parent_frees_its_children_and_is_lost_only_if_we_had_started_it() -> None:
    lin = resolve([B, C], {})  # "a" predates the consumer: not a loss
    assert lin.readable == {"b", "c"}
    assert lin.lost_parents == frozenset()
    lin = resolve([B, C], {"a": {"finished": False, "checkpoint": "1"}})
    assert lin.readable == {"b", "c"}
    assert lin.lost_parents == {"a"}
    assert resolve([B, C], {"a": {"finished": True}}).lost_parents == frozenset()


def test_balance_takes_free_and_expired_leases_up_to_a_fair_share() -> None:
    policy = BalancePolicy()
    shards = ["s1", "s2", "s3", "s4"]
    # alone: everything
    assert policy.choose(shards, {}, "me", 100) == shards
    # another live owner holds two: our share is two of the free ones
    states = {
        "s1": {"lease_owner": "other", "lease_expires": 200},
        "s2": {"lease_owner": "other", "lease_expires": 200},
    }
    assert policy.choose(shards, states, "me", 100) == ["s3", "s4"]
    # the other owner's leases expired: fair share is all four again
    assert policy.choose(shards, states, "me", 300) == shards
    # we already hold our share
    mine = {s: {"lease_owner": "me", "lease_expires": 200} for s in ("s1", "s2")}
    mine["s3"] = {"lease_owner": "other", "lease_expires": 200}
    assert policy.choose(shards, mine, "me", 100) == []


@given(
    st.integers(1, 12),
    st.dictionaries(st.integers(0, 11), st.sampled_from(["w1", "w2", "w3"]), max_size=12),
)
def test_balance_never_claims_a_live_lease_nor_more_than_the_share(
    count: int, owners: dict[int, str]
) -> None:
    shards = [f"s{i:02d}" for i in range(count)]
    states = {f"s{i:02d}": {"lease_owner": o, "lease_expires": 10} for i, o in owners.items()}
    chosen = BalancePolicy().choose(shards, states, "me", 5)
    assert all(live_owner(states.get(s, {}), 5) is None for s in chosen)
    live = {o for i, o in owners.items() if i < count} | {"me"}
    assert len(chosen) <= -(-count // len(live))


def test_retention_guard_warns_then_errors() -> None:
    tuning = Tuning()
    assert retention_level(3600, tuning) == "ok"
    assert retention_level(13 * 3600, tuning) == "warn"
    assert retention_level(21 * 3600, tuning) == "error"


def test_backoff_is_capped() -> None:
    tuning = Tuning(backoff_base=0.1, backoff_cap=1.0)
    assert all(tuning.backoff(n) <= 1.0 for n in range(1, 30))
    assert tuning.backoff(1) <= 0.1


def test_undeclared_metric_is_refused() -> None:
    with pytest.raises(KeyError, match="undeclared"):
        Metrics("source").inc("made_up_total")  # type: ignore[arg-type]  # the runtime guard


def test_raw_sequence_strips_our_padding() -> None:
    assert raw_sequence("0000001100000000017454423009") == "1100000000017454423009"


def test_scripted_stream_reads_closed_shards_to_an_end_and_routes_keys_to_children() -> None:
    stream = ScriptedStream(FakeClock(), shards=1)
    table = ScriptedTable(stream)
    item = to_typed({"pk": "p", "sk": "s", "v": 1})
    table.put(item)
    (parent,) = stream.open_shards()
    left, right = stream.split(parent)
    seq = table.put({**item, "v": to_typed({"v": 2})["v"]})
    assert stream.shard_of(seq) in (left, right)
    assert stream.parents_of(stream.shard_of(seq)) == (parent,)
    page = stream.get_records(stream.iterator(parent, None), 10)
    assert len(page.records) == 1 and page.records[0]["eventName"] == "INSERT"
    assert page.next_iterator is None  # closed and read to its end
    child = stream.get_records(stream.iterator(stream.shard_of(seq), None), 10)
    assert child.records[0]["eventName"] == "MODIFY"
    assert "OldImage" in child.records[0]["dynamodb"]


def test_scripted_stream_faults() -> None:
    stream = ScriptedStream(FakeClock(), shards=1)
    (shard,) = stream.open_shards()
    it = stream.iterator(shard, None)
    stream.expire_iterators()
    with pytest.raises(IteratorExpired):
        stream.get_records(it, 10)
    table = ScriptedTable(stream)
    for n in range(3):
        table.put(to_typed({"pk": "p", "sk": str(n)}))
    stream.trim_records(shard, 2)
    with pytest.raises(DataTrimmed):
        stream.iterator(shard, "0" * 39 + "1")
    horizon = stream.get_records(stream.iterator(shard, None), 10)
    assert len(horizon.records) == 1


@given(
    offsets=st.tuples(st.integers(0, 5), st.integers(0, 5)),
    writes=st.lists(st.tuples(st.integers(0, 7), st.booleans()), min_size=1, max_size=40),
)
def test_scripted_shards_number_their_records_independently(
    offsets: tuple[int, int], writes: list[tuple[int, bool]]
) -> None:
    # GIVEN two shards numbering from their own offsets; some writes split a shard first
    stream = ScriptedStream(FakeClock(), shards=2, seq_offsets=offsets)
    table = ScriptedTable(stream)
    emitted: list[tuple[str, int]] = []  # (shard, number) in time order
    for n, (key, split) in enumerate(writes):
        item = to_typed({"pk": f"k{key}", "sk": "s", "v": n})
        if split and len(stream.open_shards()) < 8:
            stream.split(stream.shard_for(item))
        seq = table.put(item)
        emitted.append((stream.shard_of(seq), int(seq)))
    # THEN numbers are unique, grow within a shard, and a child's exceed its parents'
    numbers = [number for _, number in emitted]
    assert len(set(numbers)) == len(numbers)
    last: dict[str, int] = {}
    for shard, number in emitted:
        assert number > last.get(shard, 0)
        for parent in stream.parents_of(shard):
            assert number > last.get(parent, 0)
        last[shard] = number


def test_scripted_shard_numbers_do_not_follow_time_across_shards() -> None:
    # GIVEN shard 0 numbering three records above shard 1
    stream = ScriptedStream(FakeClock(), shards=2, seq_offsets=(3, 0))
    table = ScriptedTable(stream)
    keys = [to_typed({"pk": f"k{n}", "sk": "s"}) for n in range(40)]
    first = next(k for k in keys if stream.shard_for(k) == stream.open_shards()[0])
    second = next(k for k in keys if stream.shard_for(k) == stream.open_shards()[1])
    # WHEN shard 0 gets a record, then shard 1 gets two
    earlier = int(table.put(first))
    later = [int(table.put({**second, "v": to_typed({"v": n})["v"]})) for n in range(2)]
    # THEN the later records carry lower numbers (as on DynamoDB, across shards)
    assert all(number < earlier for number in later)
    assert later[0] < later[1]
