"""Pure backfill logic with FakeClock: budgets, hot-key detection and splitting, rate limits."""

from __future__ import annotations

import itertools
from decimal import Decimal
from typing import Any

import pytest
from botocore.exceptions import ClientError
from hypothesis import given
from hypothesis import strategies as st

from backfill.budget import Budget
from backfill.hotkey import HotKeyDetector, attr_id, attr_less, named_key, split_bounds
from backfill.keys import dump_key, load_key
from backfill.plan import choose_total_segments, seg_sk, split_sk
from backfill.progress import line
from livemigrate.clock import Every, FakeClock
from livemigrate.ratelimit import RateLimiter, RatesFromControl, is_throttle

HOT = {"S": "section-outbox|docket"}
COLD = {"S": "user|1"}


# -- budget -------------------------------------------------------------------------------------
def test_budget_refuses_a_page_that_would_not_fit_before_the_deadline() -> None:
    clock = FakeClock()
    budget = Budget.starting_now(10.0, clock, margin=0.5)
    assert budget.allows_page()
    budget.record_page(3.0)
    clock.advance(6.0)  # 4 s left: a 3 s page + 0.5 s margin fits
    assert budget.allows_page()
    clock.advance(0.6)  # 3.4 s left: it does not
    assert not budget.allows_page()
    assert not budget.expired()
    clock.advance(3.0)
    assert budget.expired()


def test_budget_page_estimate_decays_after_one_slow_page() -> None:
    clock = FakeClock()
    budget = Budget.starting_now(100.0, clock)
    budget.record_page(10.0)
    for _ in range(20):
        budget.record_page(0.1)
    clock.advance(98.0)  # 2 s left: the slow page is forgotten by now
    assert budget.allows_page()


# -- hot-key detection --------------------------------------------------------------------------
def test_key_dominating_consecutive_pages_is_hot_once() -> None:
    detector = HotKeyDetector(min_pages=3, share=0.9, min_items=0)
    page = [HOT] * 10
    assert detector.observe(page, HOT) is None
    assert detector.observe(page, HOT) is None
    assert detector.observe(page, HOT) == HOT
    # Split once: the same key is never reported again for this segment.
    assert detector.observe(page, HOT) is None
    assert attr_id(HOT) in detector.skipped


def test_a_mixed_page_resets_the_streak() -> None:
    detector = HotKeyDetector(min_pages=2, share=0.9)
    assert detector.observe([HOT] * 10, HOT) is None
    assert detector.observe([COLD] * 5 + [HOT] * 5, HOT) is None
    assert detector.observe([HOT] * 10, HOT) is None
    assert detector.observe([HOT] * 10, HOT) == HOT


def test_small_pages_need_the_item_floor_before_a_key_is_hot() -> None:
    detector = HotKeyDetector(min_pages=3, share=0.9, min_items=50)
    for _ in range(4):
        assert detector.observe([COLD] * 10, COLD) is None
    assert detector.observe([COLD] * 10, COLD) == COLD


def test_named_key_is_hot_at_first_sight_but_not_when_the_segment_ended() -> None:
    detector = HotKeyDetector(named={attr_id(HOT)})
    assert detector.observe([COLD, HOT], None) is None
    assert detector.observe([COLD, HOT], HOT) == HOT


def test_named_numeric_and_binary_keys() -> None:
    assert named_key("0042", "N") == {"N": "42"}
    assert named_key("00ff", "B") == {"B": b"\x00\xff"}
    assert named_key("x", "S") == {"S": "x"}


# -- splitting sort-key ranges ------------------------------------------------------------------
def test_string_sort_keys_split_evenly_over_their_alphabet() -> None:
    bounds = split_bounds({"S": "msg-000000"}, {"S": "msg-008000"}, 4)
    assert [b["S"][:10] for b in bounds] == [
        "msg-000000",
        "msg-002000",
        "msg-004000",
        "msg-006000",
        "msg-008000",
    ]


def test_number_sort_keys_split_into_whole_numbers() -> None:
    bounds = split_bounds({"N": "0"}, {"N": "100"}, 4)
    assert bounds == [{"N": "0"}, {"N": "25"}, {"N": "50"}, {"N": "75"}, {"N": "100"}]


def test_adjacent_bounds_give_a_single_range() -> None:
    assert split_bounds({"N": "1"}, {"N": "2"}, 8) == [{"N": "1"}, {"N": "2"}]


def _ordered(bounds: list[dict[str, Any]]) -> bool:
    return all(attr_less(a, b) for a, b in itertools.pairwise(bounds))


@given(st.text(min_size=1, max_size=12), st.text(min_size=1, max_size=12), st.integers(2, 16))
def test_string_bounds_are_strictly_increasing_and_inside(a: str, b: str, ways: int) -> None:
    lo, hi = sorted([a, b], key=lambda s: s.encode("utf-8", "surrogatepass"))
    if lo == hi or any(0xD800 <= ord(c) <= 0xDFFF for c in lo + hi):
        return
    bounds = split_bounds({"S": lo}, {"S": hi}, ways)
    assert bounds[0] == {"S": lo} and bounds[-1] == {"S": hi}
    assert _ordered(bounds)
    assert len(bounds) <= ways + 1
    for bound in bounds:
        bound["S"].encode()  # storable


@given(
    st.decimals(-(10**9), 10**9, places=3, allow_nan=False),
    st.decimals(-(10**9), 10**9, places=3, allow_nan=False),
    st.integers(2, 16),
)
def test_number_bounds_are_strictly_increasing_and_inside(
    a: Decimal, b: Decimal, ways: int
) -> None:
    lo, hi = sorted([a, b])
    if lo == hi:
        return
    bounds = split_bounds({"N": str(lo)}, {"N": str(hi)}, ways)
    assert _ordered(bounds)


@given(st.binary(min_size=1, max_size=10), st.binary(min_size=1, max_size=10), st.integers(2, 9))
def test_binary_bounds_are_strictly_increasing_and_inside(a: bytes, b: bytes, ways: int) -> None:
    lo, hi = sorted([a, b])
    if lo == hi:
        return
    assert _ordered(split_bounds({"B": lo}, {"B": hi}, ways))


def test_checkpoint_keys_round_trip_including_binary() -> None:
    key = {"pk": {"B": b"\x00\x01"}, "sk": {"N": "5"}}
    assert load_key(dump_key(key)) == key
    assert load_key(dump_key(None)) is None


# -- planning and progress ----------------------------------------------------------------------
def test_total_segments_follow_table_size_with_a_floor_per_worker() -> None:
    assert choose_total_segments(100, 10_000, workers=4) == 4
    assert choose_total_segments(10_000_000, 10**9, workers=4) == 200
    assert choose_total_segments(0, 50 * 1024**3, workers=1) == 200
    assert seg_sk(7) == "SEG#000007"
    assert split_sk(7, 2) == "SPLIT#000007#2"


def test_progress_line_has_percent_rate_and_eta() -> None:
    text = line(read=250, total=1000, rate=50.0)
    assert "25.0%" in text
    assert "50 items/s" in text
    assert "ETA 0:00:15" in text
    assert "ETA ?" in line(read=0, total=1000, rate=0.0)


# -- rate limiting ------------------------------------------------------------------------------
def test_rate_cap_holds_over_time() -> None:
    clock = FakeClock()
    limiter = RateLimiter(100.0, clock)
    started = clock.now()
    for _ in range(50):
        limiter.acquire(20)  # 1000 items at 100 items/s, one second of burst
    assert clock.now() - started == pytest.approx(9.0, abs=0.01)


def test_no_cap_never_waits() -> None:
    clock = FakeClock()
    limiter = RateLimiter(0.0, clock)
    assert sum(limiter.acquire(10_000) for _ in range(10)) == 0.0


def throttle() -> ClientError:
    return ClientError(
        {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow"}},
        "Scan",
    )


def test_throttling_backs_off_lowers_the_rate_and_recovers() -> None:
    clock = FakeClock()
    limiter = RateLimiter(100.0, clock)
    calls: list[ClientError | str] = [throttle(), throttle(), "ok"]

    def flaky() -> str:
        result = calls.pop(0)
        if isinstance(result, ClientError):
            raise result
        return result

    started = clock.now()
    assert limiter.call(1, flaky) == "ok"
    assert clock.now() > started  # it slept between attempts
    assert limiter.effective_rate == pytest.approx(25.0 + 2.0)  # halved twice, one step back
    for _ in range(100):
        limiter.succeeded()
    assert limiter.effective_rate == 100.0


def test_non_throttling_errors_are_not_retried() -> None:
    limiter = RateLimiter(0.0, FakeClock())
    error = ClientError({"Error": {"Code": "ValidationException", "Message": "bad"}}, "Scan")
    assert not is_throttle(error)
    assert is_throttle(throttle())

    def bad() -> None:
        raise error

    with pytest.raises(ClientError):
        limiter.call(1, bad)


class FakeRatesStore:
    def __init__(self) -> None:
        self.item: dict[str, Any] | None = None
        self.reads = 0

    def get(self, sk: str) -> dict[str, Any] | None:
        self.reads += 1
        return self.item


def test_caps_follow_the_control_table_every_few_seconds() -> None:
    clock = FakeClock()
    read, write = RateLimiter(0.0, clock), RateLimiter(50.0, clock)
    store = FakeRatesStore()
    rates = RatesFromControl(store, read, write, clock, every_seconds=5.0)  # type: ignore[arg-type]
    assert rates.maybe_refresh()
    assert (read.rate, write.rate) == (0.0, 50.0)
    store.item = {"read_rate": Decimal(200)}
    assert not rates.maybe_refresh()  # too soon: no read
    clock.advance(5.0)
    assert rates.maybe_refresh()
    assert (read.rate, write.rate) == (200.0, 50.0)
    store.item = {}
    clock.advance(5.0)
    rates.maybe_refresh()
    assert (read.rate, write.rate) == (0.0, 50.0)  # back to the configured defaults
    assert store.reads == 3


def test_detection_survives_a_restart_between_pages() -> None:
    first = HotKeyDetector(min_pages=3, min_items=0)
    assert first.observe([HOT] * 10, HOT) is None
    assert first.observe([HOT] * 10, HOT) is None
    # GIVEN the worker's budget ran out here and another worker resumes the segment
    second = HotKeyDetector(min_pages=3, min_items=0)
    second.restore(first.state())
    assert second.observe([HOT] * 10, HOT) == HOT


def test_every_is_due_at_most_once_per_period() -> None:
    # GIVEN a period of 10 s on a fake clock
    clock = FakeClock()
    every = Every(10.0, clock)
    # THEN it is not due before 10 s have passed, due once then, and again 10 s later
    assert not every.due()
    clock.sleep(9.9)
    assert not every.due()
    clock.sleep(0.2)
    assert every.due()
    assert not every.due()
    clock.sleep(10.0)
    assert every.due()
