"""The retention guard's decisions (rule 9), one test each: thresholds, ETA, refuse or warn."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from livemigrate.clock import FakeClock
from livemigrate.gates import Snapshot, check_all, reverse_problems
from livemigrate.retention import (
    DYNAMODB_STREAMS_RETENTION,
    HOUR,
    KINESIS,
    BackfillGuard,
    Eta,
    Retention,
    duration,
    estimate,
    eta_message,
    headroom,
    judge,
    kinesis_retention,
    lag_message,
    recorded,
    retention_of,
    status_line,
    summary,
)
from stream_consumer.engine import Tuning, retention_level

DDB = DYNAMODB_STREAMS_RETENTION
hours = st.floats(min_value=24, max_value=8760)
lags = st.floats(min_value=0, max_value=8760 * HOUR)


def test_dynamodb_streams_keep_24_h_warn_at_12_error_at_20_and_backfill_within_20() -> None:
    assert DDB.seconds == 24 * HOUR
    assert (DDB.warn_seconds, DDB.error_seconds) == (12 * HOUR, 20 * HOUR)
    assert DDB.backfill_limit == 20 * HOUR


@given(hours, lags)
def test_lag_level_follows_the_retention_of_the_source(retention_hours: float, lag: float) -> None:
    retention = Retention(KINESIS, retention_hours * HOUR)
    expected = (
        "error"
        if lag >= retention.seconds * 5 / 6
        else "warn"
        if lag >= retention.seconds / 2
        else "ok"
    )
    assert retention.level(lag) == expected
    # The consumer engine decides with the same thresholds (one place).
    assert retention_level(lag, Tuning(retention=retention)) == expected


def test_a_kinesis_stream_of_7_days_tolerates_a_lag_that_streams_would_not() -> None:
    week = Retention(KINESIS, 168 * HOUR)
    assert retention_level(21 * HOUR, Tuning()) == "error"
    assert retention_level(21 * HOUR, Tuning(retention=week)) == "ok"


@given(hours, st.floats(min_value=0, max_value=10_000 * HOUR))
def test_the_backfill_limit_is_the_retention_minus_the_margin(
    retention_hours: float, margin: float
) -> None:
    retention = Retention(KINESIS, retention_hours * HOUR, margin)
    assert retention.backfill_limit == max(0.0, retention.seconds - margin)
    assert Retention(KINESIS, retention_hours * HOUR).backfill_limit == pytest.approx(
        retention_hours * HOUR * 5 / 6
    )


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(24 * HOUR, "24 h"), (168 * HOUR, "7 d"), (5400, "1 h 30 min"), (600, "10 min"), (8, "8 s")],
)
def test_durations_read_as_operators_write_them(seconds: float, text: str) -> None:
    assert duration(seconds) == text


class FakeKinesis:
    """DescribeStreamSummary only (the integration test reads a real stream)."""

    class exceptions:  # noqa: N801 - boto3's attribute name
        class ResourceNotFoundException(Exception):
            pass

    def __init__(self, hours: int) -> None:
        self.hours = hours
        self.calls: list[dict[str, str]] = []

    def describe_stream_summary(self, **kwargs: str) -> dict[str, Any]:
        self.calls.append(kwargs)
        if kwargs.get("StreamName") == "missing":
            raise self.exceptions.ResourceNotFoundException
        return {"StreamDescriptionSummary": {"RetentionPeriodHours": self.hours}}


def test_a_kinesis_retention_is_read_from_the_stream_by_name_or_arn() -> None:
    client = FakeKinesis(72)
    assert kinesis_retention(client, "orders").seconds == 72 * HOUR
    kinesis_retention(client, "arn:aws:kinesis:us-east-1:1:stream/orders")
    assert client.calls == [
        {"StreamName": "orders"},
        {"StreamARN": "arn:aws:kinesis:us-east-1:1:stream/orders"},
    ]
    assert retention_of("dynamodb-streams") == DDB


def test_a_missing_or_unnamed_kinesis_stream_is_a_clear_configuration_error() -> None:
    from livemigrate.errors import ConfigError

    with pytest.raises(ConfigError, match="does not exist"):
        kinesis_retention(FakeKinesis(24), "missing")
    with pytest.raises(ConfigError, match="LIVEMIGRATE_KINESIS_STREAM"):
        retention_of(KINESIS, FakeKinesis(24), None)


@given(
    st.integers(min_value=1, max_value=10**9),
    st.integers(min_value=0, max_value=10**9),
    st.integers(min_value=1, max_value=10**6),
    st.floats(min_value=0.001, max_value=10**6),
)
def test_the_eta_is_what_is_left_at_this_runs_rate(
    total: int, already: int, read: int, elapsed: float
) -> None:
    eta = estimate(total, already, read, elapsed)
    assert eta is not None
    assert eta.remaining == max(0, total - already - read)
    assert eta.seconds == pytest.approx(eta.remaining * elapsed / read)
    assert estimate(total, already, 0, elapsed) is None


@given(st.floats(min_value=0, max_value=10**7), st.booleans(), st.booleans())
def test_refuse_only_the_first_measure_over_the_limit_unforced_else_warn(
    seconds: float, first: bool, forced: bool
) -> None:
    verdict = judge(Eta(seconds, 1, 1, 1.0), DDB, first=first, forced=forced)
    if seconds <= DDB.backfill_limit:
        assert verdict == "ok"
    elif first and not forced:
        assert verdict == "refuse"
    else:
        assert verdict == "warn"


def test_the_refusal_names_the_eta_the_retention_the_risk_and_the_override() -> None:
    text = eta_message(Eta(30 * HOUR, 100, 90, 0.5), DDB, "refuse")
    assert "backfill refused" in text
    assert "ETA is 30 h" in text
    assert "retention of 24 h (DynamoDB Streams)" in text
    assert "margin of 4 h" in text
    assert "trimmed unapplied" in text
    assert "--force" in text


class Run:
    """A scripted backfill: ``read`` items so far, on a fake clock."""

    def __init__(self) -> None:
        self.read = 0
        self.stops = 0

    def stop(self) -> None:
        self.stops += 1


def guard(
    run: Run, clock: FakeClock, *, forced: bool = False, total: int = 10_000
) -> BackfillGuard:
    return BackfillGuard(
        Retention(KINESIS, 24 * HOUR),
        lambda: run.read,
        total=total,
        already=0,
        min_items=300,
        stop=run.stop,
        forced=forced,
        clock=clock,
    )


def test_no_measure_before_the_first_pages() -> None:
    run, clock = Run(), FakeClock()
    g = guard(run, clock)
    clock.advance(1000)
    run.read = 299
    assert g.check() is None
    assert run.stops == 0


def test_a_slow_first_measure_stops_the_run_once_with_the_refusal() -> None:
    run, clock = Run(), FakeClock()
    g = guard(run, clock)
    clock.advance(300)
    run.read = 300  # 1 item/s, 9,700 left: ETA 2.7 h, under the 20 h limit
    assert g.check() == "ok"
    assert run.stops == 0
    run2, clock2 = Run(), FakeClock()
    g2 = guard(run2, clock2, total=100_000)
    clock2.advance(300)
    run2.read = 300  # 1 item/s, 99,700 left: ETA 27 h > 20 h
    assert g2.check() == "refuse"
    assert run2.stops == 1
    assert g2.refusal is not None and "ETA is 27 h" in g2.refusal


def test_forced_or_later_crossings_warn_once_per_crossing(caplog: pytest.LogCaptureFixture) -> None:
    run, clock = Run(), FakeClock()
    g = guard(run, clock, forced=True, total=100_000)
    clock.advance(300)
    run.read = 300
    with caplog.at_level(logging.WARNING, "livemigrate.retention"):
        assert g.check() == "warn"
        assert g.check() == "warn"  # still over: not repeated
    assert run.stops == 0
    assert sum("RETENTION RISK" in r.getMessage() for r in caplog.records) == 1
    # It speeds up (back under the limit), then slows down again: a new crossing warns again.
    run.read = 90_000
    assert g.check() == "ok"
    clock.advance(10**6)
    with caplog.at_level(logging.WARNING, "livemigrate.retention"):
        assert g.check() == "warn"
    assert sum("RETENTION RISK" in r.getMessage() for r in caplog.records) == 2


def test_an_unforced_run_that_slows_down_later_is_warned_not_stopped() -> None:
    run, clock = Run(), FakeClock()
    g = guard(run, clock, total=100_000)
    clock.advance(30)
    run.read = 300  # 10 items/s: ETA 2.8 h
    assert g.check() == "ok"
    clock.advance(10**6)
    assert g.check() == "warn"
    assert run.stops == 0


def test_the_consumer_lag_message_names_the_retention() -> None:
    assert lag_message("consumer x", HOUR, DDB) is None
    assert "retention is 24 h (DynamoDB Streams)" in str(lag_message("consumer x", 13 * HOUR, DDB))
    assert "LOST" in str(lag_message("consumer x", 21 * HOUR, DDB))


def test_the_gate_fails_only_at_the_error_lag_and_shows_the_backfill_eta() -> None:
    item = {"kind": "kinesis", "retention_seconds": 48 * HOUR, "backfill_limit_seconds": 40 * HOUR}
    item["backfill_eta_seconds"] = 3 * HOUR
    met, why, _ = headroom(item, 21 * HOUR, backfilling=True)
    assert met
    assert "retention 48 h (the Kinesis stream)" in why
    assert "backfill ETA 3 h (limit 40 h)" in why
    met, why, fix = headroom(item, 41 * HOUR, backfilling=False)
    assert not met and "trimmed unapplied" in why and fix
    assert "backfill ETA" not in why
    met, why, _ = headroom(None, 21 * HOUR, backfilling=False)  # none recorded: 24 h
    assert not met and "retention 24 h (DynamoDB Streams)" in why


def test_the_cutover_gates_include_the_retention_headroom() -> None:
    consumer = {"heartbeat_at": 0.0, "lag_seconds": 21 * HOUR}
    gates = {g.name: g for g in check_all(Snapshot(now=1.0, consumer=consumer), _policy())}
    assert not gates["stream retention headroom"].met


def _policy() -> Any:
    from livemigrate.gates import Policy

    return Policy()


def test_a_reverse_consumer_lagging_near_the_destination_retention_is_a_problem() -> None:
    fresh = {"heartbeat_at": 100.0, "lag_seconds": 60.0}
    assert reverse_problems(fresh, 100.0, 30.0) == []
    late = {"heartbeat_at": 100.0, "lag_seconds": 21 * HOUR}
    assert any("LOST" in p for p in reverse_problems(late, 100.0, 30.0))


def test_status_shows_the_recorded_retention_and_eta() -> None:
    item = {
        "kind": "kinesis",
        "retention_seconds": 168 * HOUR,
        "backfill_limit_seconds": 140 * HOUR,
    }
    item["backfill_eta_seconds"] = 7200
    assert recorded(item).backfill_limit == 140 * HOUR
    block = summary(item, 0.0)
    assert block["consumer_lag_level"] == "ok"
    line = status_line(block)
    assert "retention: 7 d (the Kinesis stream)" in line
    assert "within 140 h" in line and "ETA 2 h" in line
    assert "24 h (DynamoDB Streams)" in status_line(summary(None, None))
