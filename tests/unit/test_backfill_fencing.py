"""Fence, heartbeat, budget, rate-limit deadline and outage decisions (FakeClock)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from hypothesis import given
from hypothesis import strategies as st

from backfill.budget import Budget
from backfill.health import Health, Interrupted
from backfill.lease import UnitLease
from backfill.writes import Tally, _Item, prefix
from livemigrate.clock import FakeClock
from livemigrate.errors import LeaseLost, ServiceUnreachable
from livemigrate.fencing import LeaseExpired
from livemigrate.ratelimit import PastDeadline, RateLimiter


class FakeLeases:
    """The control table's lease rule: renewals need the lease ours and unexpired."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.owner = "me"
        self.expires = clock.now() + 30.0
        self.renewals: list[float] = []
        self.updates: list[dict[str, Any]] = []
        self.down = False

    def renew(
        self,
        sk: str,
        owner: str,
        ttl: float,
        now: float,
        values: Mapping[str, Any] | None,
        *,
        add: Mapping[str, float] | None = None,
    ) -> None:
        if owner != self.owner or self.expires <= now:
            raise LeaseLost(sk)
        self.expires = now + ttl
        self.renewals.append(now)

    def update(self, sk: str, values: Mapping[str, Any]) -> None:
        if self.down:
            raise EndpointConnectionError(endpoint_url="http://x")
        self.updates.append(dict(values))


def lease_of(clock: FakeClock, store: FakeLeases) -> UnitLease:
    return UnitLease(
        store,  # type: ignore[arg-type]
        "SEG#000000",
        "me",
        clock=clock,
        ttl=30.0,
        margin=10.0,
        sent_at=clock.monotonic(),
    )


# -- fence and heartbeat ------------------------------------------------------------------------
def test_fence_ends_a_margin_before_the_lease_counted_from_the_claim_sent() -> None:
    clock = FakeClock()
    lease = lease_of(clock, FakeLeases(clock))
    clock.advance(19.9)
    lease.fence.check()
    clock.advance(0.2)
    with pytest.raises(LeaseExpired):
        lease.fence.check()


def test_heartbeat_renews_halfway_to_the_fence_and_moves_it() -> None:
    clock = FakeClock()
    store = FakeLeases(clock)
    lease = lease_of(clock, store)
    clock.advance(9.0)
    lease.keep_alive()
    assert store.renewals == []  # not due: (30 - 10) / 2 = 10 s
    clock.advance(1.0)
    lease.keep_alive()
    assert store.renewals == [clock.now()]
    # THEN the fence counts from the renewal: 20 s after it
    clock.advance(19.9)
    lease.fence.check()


def test_a_refused_renewal_revokes_the_fence_at_once() -> None:
    clock = FakeClock()
    store = FakeLeases(clock)
    lease = lease_of(clock, store)
    store.owner = "taker"
    clock.advance(10.0)
    with pytest.raises(LeaseLost):
        lease.keep_alive()
    # 10 s before the fence would have passed, writes are refused already
    with pytest.raises(LeaseExpired):
        lease.fence.check()


def test_a_stale_holder_cannot_renew_after_its_lease_expired() -> None:
    clock = FakeClock()
    store = FakeLeases(clock)
    lease = lease_of(clock, store)
    clock.advance(31.0)  # paused past the lease: nobody took it, but it expired
    with pytest.raises(LeaseLost):
        lease.renew({"checkpoint": "x"})
    assert lease.fence.expired()


# -- budget and rate-limit deadlines ------------------------------------------------------------
def test_first_page_is_allowed_but_writes_stop_at_the_deadline() -> None:
    clock = FakeClock()
    budget = Budget.starting_now(3.0, clock, margin=0.5)
    assert budget.allows_page()  # nothing measured yet: the writer enforces the deadline
    clock.advance(2.9)
    assert budget.writes_left() == pytest.approx(0.1)
    clock.advance(0.1)
    assert budget.writes_left() <= 0


def test_rate_cap_wait_past_the_deadline_is_refused_and_tokens_given_back() -> None:
    clock = FakeClock()
    limiter = RateLimiter(4.0, clock)
    for _ in range(4):
        limiter.acquire(1, deadline=lambda: 1.0)  # the burst
    with pytest.raises(PastDeadline):
        limiter.acquire(1, deadline=lambda: 0.2)  # would wait 0.25 s
    assert clock.now() == 1_000_000.0  # nothing slept
    assert limiter.acquire(1, deadline=lambda: 0.3) == pytest.approx(0.25)  # not 0.5


def test_throttling_back_off_past_the_deadline_is_refused() -> None:
    clock = FakeClock()
    limiter = RateLimiter(0.0, clock)
    error = ClientError({"Error": {"Code": "ThrottlingException", "Message": "x"}}, "PutItem")

    def throttled() -> None:
        raise error

    with pytest.raises(PastDeadline):
        limiter.call(1, throttled, deadline=lambda: 0.0)


# -- the written prefix of a page ---------------------------------------------------------------
outcomes = st.lists(
    st.sampled_from(["written", "budget", "lost", "outage"]), min_size=0, max_size=30
)


def as_item(kind: str) -> _Item:
    if kind == "written":
        return _Item(Tally(written=1))
    error: BaseException = {
        "budget": PastDeadline("b"),
        "lost": LeaseExpired("l"),
        "outage": EndpointConnectionError(endpoint_url="x"),
    }[kind]
    return _Item(None, error)


@given(outcomes)
def test_only_the_fully_written_prefix_is_counted_and_the_reason_is_kept(kinds: list[str]) -> None:
    page = prefix([as_item(k) for k in kinds])
    done = next((i for i, k in enumerate(kinds) if k != "written"), len(kinds))
    assert page.done == done
    assert page.tally.written == done
    rest = kinds[done:]
    assert (page.lost is not None) == ("lost" in rest)
    assert (page.failure is not None) == ("outage" in rest)


# -- outages ------------------------------------------------------------------------------------
def test_outage_is_backed_off_recorded_and_recovered() -> None:
    clock = FakeClock()
    store = FakeLeases(clock)
    health = Health(store, clock, max_seconds=300.0)  # type: ignore[arg-type]
    answers: list[Exception | str] = [EndpointConnectionError(endpoint_url="x") for _ in range(5)]
    answers.append("ok")

    def call() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    started = clock.now()
    assert health.call(call) == "ok"
    waited = clock.now() - started
    assert 0 < waited <= 0.2 + 0.4 + 0.8 + 1.6 + 3.2  # capped exponential, jittered
    assert store.updates[0]["degraded_at"] == started
    assert store.updates[-1] == {"degraded_at": started, "recovered_at": clock.now()}
    assert not health.degraded


def test_outage_longer_than_the_setting_is_service_unreachable() -> None:
    clock = FakeClock()
    health = Health(FakeLeases(clock), clock, max_seconds=60.0)  # type: ignore[arg-type]

    def down() -> None:
        raise EndpointConnectionError(endpoint_url="x")

    with pytest.raises(ServiceUnreachable):
        health.call(down)
    assert 60.0 < clock.now() - 1_000_000.0 <= 60.0 + 10.0


def test_outage_stops_at_the_budget_and_real_errors_are_not_retried() -> None:
    clock = FakeClock()
    health = Health(FakeLeases(clock), clock)  # type: ignore[arg-type]

    def down() -> None:
        raise EndpointConnectionError(endpoint_url="x")

    with pytest.raises(Interrupted):
        health.call(down, time_up=lambda: True)
    invalid = ClientError({"Error": {"Code": "ValidationException", "Message": "x"}}, "Scan")

    def bad() -> None:
        raise invalid

    with pytest.raises(ClientError):
        health.call(bad)
