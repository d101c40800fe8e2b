"""The names declared once in the core (issue 19): what is stored must never change spelling."""

from __future__ import annotations

from typing import get_args

from backfill.progress import line
from livemigrate import counters, keys
from livemigrate.backoff import Backoff
from livemigrate.deadletters import Origin
from livemigrate.retention import estimate, seconds_left
from livemigrate.versioning import is_reserved, user_attributes
from stream_consumer.metrics import METRICS


def test_control_table_keys_keep_the_spellings_existing_tables_hold() -> None:
    # GIVEN control tables written by earlier releases, WHEN keys are built, THEN they match.
    assert keys.migration_pk("m1") == "MIG#m1"
    assert keys.destination_pk("orders_v2") == "DEST#orders_v2"
    assert keys.CONSUMER_SOURCE == "CONSUMER#source"
    assert keys.CONSUMER_REVERSE == "CONSUMER#reverse"
    assert keys.shard("source", "shardId-1") == "SHARD#source#shardId-1"
    assert keys.segment(7) == "SEG#000007"
    assert keys.split(7, 2) == "SPLIT#000007#2"
    assert keys.split(7, 2).startswith(keys.split_prefix(7))
    assert keys.export("abc") == "EXPORT#abc"
    singles = [keys.META, keys.PLAN, keys.RATES, keys.TOMBSTONES, keys.SEARCH, keys.CUTOVER]
    singles += [keys.ROLLBACK, keys.VERIFY, keys.FLAG, keys.FLAG_LOCK, keys.METRICS]
    assert singles == [
        "META", "PLAN", "RATES", "TOMBSTONES", "SEARCH", "CUTOVER",
        "ROLLBACK", "VERIFY", "FLAG", "FLAGLOCK", "METRICS",
    ]  # fmt: skip


def test_kind_groups_a_family_under_its_prefix_and_a_single_item_under_itself() -> None:
    assert keys.kind(keys.consumer("search")) == keys.kind(keys.CONSUMER_PREFIX) == "CONSUMER"
    assert keys.kind(keys.split(1, 0)) == keys.kind(keys.SPLIT_PREFIX) == "SPLIT"
    assert keys.kind(keys.PLAN) == "PLAN"
    assert keys.kind(keys.FLAG_LOCK) != keys.kind(keys.FLAG)


def test_user_attributes_drops_only_the_reserved_prefix() -> None:
    item = {"pk": 1, "_lm_seq": "0", "_lm_tomb": True, "lm_x": 2, "x_lm_": 3}
    assert user_attributes(item) == {"pk": 1, "lm_x": 2, "x_lm_": 3}
    assert is_reserved("_lm_src") and not is_reserved("_lmx")


def test_every_consumer_metric_has_one_meaning_and_every_meaning_a_name() -> None:
    assert sorted(METRICS) == sorted(get_args(counters.ConsumerMetric))


def test_unit_counters_keep_the_attribute_names_existing_units_hold() -> None:
    # GIVEN unit items written by earlier releases: the two older spellings stay what is stored.
    assert counters.fresh_unit_counters() == {
        "items_read": 0,
        "items_written": 0,
        "superseded": 0,
        "dead_lettered": 0,
        "already_copied": 0,
    }
    assert set(counters.UNIT_COUNTERS) == set(get_args(counters.UnitCounter))
    assert set(counters.UNIT_COUNTERS) <= set(get_args(counters.Counter))


def test_each_dead_letter_origin_has_its_counter() -> None:
    origins = get_args(Origin)
    assert sorted(counters.DEAD_LETTERS_BY_ORIGIN) == sorted(origins)
    assert all(counters.DEAD_LETTERS_BY_ORIGIN[o] == f"dead_letters_{o}" for o in origins)
    assert set(counters.DEAD_LETTERS_BY_ORIGIN.values()) <= set(get_args(counters.Counter))


def test_backoff_doubles_from_base_to_cap_and_jitters_within_half_to_all() -> None:
    exact = Backoff(base=0.1, cap=1.0, jitter=False)
    assert [exact.delay(n) for n in range(1, 6)] == [0.1, 0.2, 0.4, 0.8, 1.0]
    assert exact.delay(0) == 0.1  # attempt counts from 1; 0 is the first too
    assert exact.delay(10**6) == 1.0  # a long outage's failure count never overflows
    jittered = Backoff(base=0.1, cap=1.0)
    assert all(0.5 * exact.delay(n) <= jittered.delay(n) <= exact.delay(n) for n in range(1, 40))


def test_one_eta_for_the_progress_line_status_and_the_retention_guard() -> None:
    assert seconds_left(300, 100.0) == 3.0
    assert seconds_left(0, 0.0) == 0.0  # done: no time left, even before a rate is known
    assert seconds_left(300, 0.0) is None  # nothing read yet: unknown
    assert line(read=700, total=1000, rate=100.0).endswith("ETA 0:00:03")
    assert line(read=1000, total=1000, rate=0.0).endswith("ETA 0:00:00")
    assert line(read=10, total=0, rate=5.0).endswith("ETA ?")
    eta = estimate(total=1000, already=100, read=600, elapsed=6.0)
    assert eta is not None and eta.seconds == 3.0 and eta.remaining == 300
