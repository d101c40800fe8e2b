"""Counter and metric names, declared once as typed sets (CONVENTIONS.md, arroyo's metric_defs).

A name is a ``Literal``: a misspelt counter is a type error under mypy, not a silent new series
or a new attribute on a control-table item. Stored names never change spelling (existing control
tables and ``status --json`` keep working); where two spellings are stored, both are here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Literal

# The migration's counters (``ControlStore.metrics``), shown by ``status``: the first five
# are the backfill units' (``UNIT_COUNTERS``, summed over the units), the rest METRICS's.
Counter = Literal[
    "items_read",  # source items read, counted by the checkpoint that covers them (once)
    "items_written",  # backfill puts that landed
    "superseded_by_live_write",  # backfill puts that lost to a live write or tombstone (rule 1)
    "items_already_copied",  # items of a page read again that the backfill had copied already
    "dead_letters",  # backfill items sent to the dead-letter store
    "items_reread_after_budget",  # items of pages cut by the budget, read again by the next run
    "collisions_dead_lettered",  # records dead-lettered: two source items map to one key
    # dead letters written, by origin (livemigrate.deadletters.Origin)
    "dead_letters_backfill",
    "dead_letters_stream",
    "dead_letters_search",
    "dead_letters_verify",
    "dead_letters_reverse",
]

DEAD_LETTERS_BY_ORIGIN: Final[Mapping[str, Counter]] = {
    "backfill": "dead_letters_backfill",
    "stream": "dead_letters_stream",
    "search": "dead_letters_search",
    "verify": "dead_letters_verify",
    "reverse": "dead_letters_reverse",
}

# The counters every backfill unit (SEG# / SPLIT# item) keeps beside its checkpoint.
UnitCounter = Literal[
    "items_read",
    "items_written",
    "superseded_by_live_write",
    "dead_letters",
    "items_already_copied",
]
UNIT_COUNTERS: Final[tuple[UnitCounter, ...]] = (
    "items_read",
    "items_written",
    "superseded_by_live_write",
    "dead_letters",
    "items_already_copied",
)
# The attribute each unit counter is stored under on a unit item: the spelling the first
# releases wrote, kept so that units of existing control tables resume with their counts.
UNIT_FIELDS: Final[Mapping[UnitCounter, str]] = {
    "items_read": "items_read",
    "items_written": "items_written",
    "superseded_by_live_write": "superseded",
    "dead_letters": "dead_lettered",
    "items_already_copied": "already_copied",
}

# The stream consumer's Prometheus series (meanings and kinds: stream_consumer.metrics.METRICS).
ConsumerMetric = Literal[
    "records_read_total",
    "records_applied_total",
    "records_dead_lettered_total",
    "apply_retries_total",
    "writes_applied_total",
    "writes_stale_total",
    "tombstones_written_total",
    "deletes_total",
    "orphans_removed_total",
    "echoes_skipped_total",
    "retired_writes_total",
    "removals_kept_total",
    "removals_not_owner_total",
    "handoffs_total",
    "claims_skipped_total",
    "collisions_total",
    "throttled_total",
    "read_errors_total",
    "iterators_expired_total",
    "trimmed_total",
    "leases_taken_total",
    "leases_lost_total",
    "shards_finished_total",
    "leases_expired_total",
    "tombstone_retries_total",
    "outage_retries_total",
    "degraded",
    "lag_seconds",
    "shards_held",
    "records_behind",
]


def fresh_unit_counters() -> dict[str, int]:
    """The counter attributes of a new unit item, all zero."""
    return {UNIT_FIELDS[name]: 0 for name in UNIT_COUNTERS}


def count(metrics: Mapping[str, Any], name: Counter) -> Any:
    """A counter as read from the METRICS item (0 while nothing was ever added to it)."""
    return metrics.get(name, 0)
