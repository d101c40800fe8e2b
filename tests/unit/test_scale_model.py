"""The scale model (bench/scale_model.py): simulated time, the tool's own planner and limits."""

from __future__ import annotations

import math

from bench.scale_model import LAMBDA_LIMIT, Shape, plain, tool


def test_a_uniform_table_takes_the_analytic_time_within_ten_percent() -> None:
    # GIVEN the seed's 13.6 M items, no hot key, a write cap of half a 10,000 WCU table
    shape = Shape(hot_share=0.0)
    # WHEN the tool's backfill runs in the model
    outcome = tool(shape)
    # THEN its makespan is the bound items x write units / cap (45 min), within 10%
    bound = shape.analytic_seconds
    assert bound == 13_600_000 / 5000
    assert abs(outcome.makespan - bound) <= 0.1 * bound
    assert outcome.longest_unit < LAMBDA_LIMIT


def test_a_hot_key_without_splitting_outlives_the_lambda_limit() -> None:
    # GIVEN 1% of the items under one partition key, fixed 200-item segments, no splitting
    outcome = plain(Shape(hot_share=0.01))
    # THEN the segment holding that key is killed at 15 minutes on every attempt: never done
    assert outcome.longest_unit >= LAMBDA_LIMIT
    assert math.isinf(outcome.makespan)


def test_with_splitting_no_unit_reaches_the_lambda_limit_and_the_key_is_split() -> None:
    # GIVEN 20% of the items under one key (2.72 M items: 45 min at one partition's 1,000 WCU)
    shape = Shape(hot_share=0.2)
    outcome = tool(shape)
    # THEN the key was split into Query units, every unit of work stays inside the default
    # budget (840 s) and so below 15 minutes, and the copy finishes
    assert outcome.units > 272
    assert outcome.longest_unit < LAMBDA_LIMIT
    assert outcome.makespan < 2 * shape.hot_items / shape.partition_wcu + shape.analytic_seconds
