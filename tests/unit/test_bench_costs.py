"""The cost bench's reference check: a figure more than 5% over its reference fails, named."""

from __future__ import annotations

from bench.bench_costs import load_reference, regressions


def test_a_figure_over_its_reference_by_more_than_five_percent_is_named() -> None:
    reference = {"backfill control-table ops/item": 0.02, "consumer puts: writes": 1.0}
    # GIVEN one figure 6% over, one 4% over and one better than its reference
    measured = {"backfill control-table ops/item": 0.0212, "consumer puts: writes": 1.04}
    assert regressions(measured, reference) == [
        "backfill control-table ops/item: 0.0212 is +6.0% over the reference 0.0200 (allowed +5%)"
    ]
    assert regressions({"consumer puts: writes": 0.5}, reference) == []
    # AND a figure the reference does not know fails too (so a new one gets a reference)
    assert regressions({"new figure": 1.0}, reference)[0].startswith("new figure")


def test_the_committed_reference_names_every_figure_of_the_bench() -> None:
    reference = load_reference()
    assert "backfill control-table ops/item" in reference
    assert all(value > 0 for value in reference.values())


def test_delete_figures_are_reported_but_not_gated() -> None:
    # GIVEN a delete figure far over any reference (it moves with the endpoint's speed)
    measured = {"consumer deletes: destination writes/record": 1.7}
    # THEN it fails nothing
    assert regressions(measured, {}) == []
