"""Bucket digests and item comparison: pure, order-independent, blind to _lm_* and encoding."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from livemigrate.clock import FakeClock
from livemigrate.tables import TableInfo
from livemigrate.transform import Transformer
from livemigrate.values import canonical_bytes
from livemigrate.verify.digest import (
    Digests,
    batches,
    bucket_of,
    choose_buckets,
    item_hash,
    key_id,
)
from livemigrate.verify.engine import Verifier, VerifyOptions, classify
from livemigrate.versioning import BACKFILL_SEQ

KEY = {"pk": {"S": "a"}, "sk": {"S": "1"}}


def test_canonical_ignores_reserved_attrs_set_order_and_number_spelling() -> None:
    a = {**KEY, "n": {"N": "1.50"}, "tags": {"SS": ["x", "y"]}, "_lm_seq": {"S": "9"}}
    b = {**KEY, "n": {"N": "1.5"}, "tags": {"SS": ["y", "x"]}}
    assert canonical_bytes(a) == canonical_bytes(b)
    assert item_hash(a) == item_hash(b)
    assert item_hash(a) != item_hash({**b, "n": {"N": "1.6"}})
    assert key_id({**KEY, "n": {"N": "0.0"}}, ("n",)) == key_id({"n": {"N": "0"}}, ("n",))


items = st.lists(
    st.fixed_dictionaries({"pk": st.text(min_size=1, max_size=5), "v": st.integers()}),
    max_size=30,
)


@given(items, st.randoms())
def test_digests_do_not_depend_on_order_and_see_duplicates(
    plain: list[dict[str, object]], rnd: object
) -> None:
    typed = [{"pk": {"S": str(i["pk"])}, "v": {"N": str(i["v"])}} for i in plain]
    shuffled = list(typed)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    one, two = Digests(4), Digests(4)
    for side, seq in ((one, typed), (two, shuffled)):
        for item in seq:
            side.add(bucket_of(key_id(item, ("pk",)), 4), item_hash(item))
    assert one.differing(two) == []
    if typed:
        two.add(bucket_of(key_id(typed[0], ("pk",)), 4), item_hash(typed[0]))
        assert one.differing(two) == [bucket_of(key_id(typed[0], ("pk",)), 4)]


def test_merge_sums_segments() -> None:
    whole, part1, part2 = Digests(2), Digests(2), Digests(2)
    whole.add(0, 5)
    whole.add(1, 7)
    part1.add(0, 5)
    part2.add(1, 7)
    part1.merge(part2)
    assert part1.differing(whole) == []
    assert whole.total == 2


def test_batches_respect_the_memory_limit_but_never_drop_a_bucket() -> None:
    sizes = [5, 1, 1, 9, 2]
    assert batches([0, 1, 2, 3, 4], sizes, limit=6) == [[0, 1], [2], [3], [4]]
    assert batches([], sizes, limit=6) == []


def test_choose_buckets_scales_with_the_table() -> None:
    assert choose_buckets(0) == 1
    assert choose_buckets(1_500) == 2
    assert choose_buckets(10**12) == 1 << 16


def test_classify_treats_tombstones_as_absent() -> None:
    tomb = {**KEY, "_lm_tomb": {"BOOL": True}, "_lm_seq": {"S": "5"}}
    assert classify("k", KEY, None, None, tomb) is None
    missing = classify("k", KEY, KEY, {**KEY, "v": {"S": "x"}}, tomb)
    assert missing is not None and missing.kind == "missing"
    held = {**KEY, "v": {"S": "y"}, "_lm_seq": {"S": BACKFILL_SEQ}}
    diff = classify("k", KEY, KEY, {**KEY, "v": {"S": "x"}}, held)
    assert diff is not None and diff.kind == "different" and diff.held_seq == BACKFILL_SEQ
    extra = classify("k", KEY, None, None, held)
    assert extra is not None and extra.kind == "extra"
    assert classify("k", KEY, KEY, {**KEY, "v": {"S": "y"}}, held) is None


def _verifier(position: Callable[[], float | None] | None, clock: FakeClock) -> Verifier:
    table = TableInfo("t", ("pk",), {"pk": "S"}, 0, 0, None, None)
    transformer = Transformer(lambda item: [item], ("pk",), {"pk": "S"})
    options = VerifyOptions(consumer_wait=5.0)
    return Verifier(
        None,  # type: ignore[arg-type]  # no reads happen in these tests
        table,
        table,
        transformer,
        options,
        clock=clock,
        consumer_position=position,
    )


def test_recheck_waits_until_the_consumer_has_passed_the_difference() -> None:
    clock = FakeClock(start=100.0)
    # the consumer's applied position trails the clock by 2 s, then catches up at 103
    verifier = _verifier(lambda: clock.now() - 2 if clock.now() < 103 else clock.now(), clock)
    assert verifier.await_consumer(since=101.0)
    assert 103.0 <= clock.now() < 103.2


def test_recheck_gives_up_waiting_for_a_stuck_consumer_and_skips_an_absent_one() -> None:
    clock = FakeClock(start=100.0)
    assert not _verifier(lambda: 50.0, clock).await_consumer(since=100.0)
    assert clock.now() == pytest.approx(105.0, abs=0.2)
    assert _verifier(lambda: None, clock).await_consumer(since=1e9)
    assert _verifier(None, clock).await_consumer(since=1e9)
