"""AWS Lambda entry point: process segment work within one invocation, leave the rest.

Use it in a Step Functions loop (or re-invoke) until ``complete`` is true
(``infra/aws/livemigrate.yaml``: the state machine plans once, then each Map iteration loops
``action: work`` until complete). Settings come from the function's ``LIVEMIGRATE_*``
environment. Event fields (all optional): ``action`` (``plan``: write the plan if none exists
and return ``{"workers": [0, ..., n-1]}`` for the Map state, n = the event's ``workers``;
``work``, the default: copy segments until the budget is spent), ``worker`` (the Map item,
for logs), ``threads`` (reader threads in this invocation, default the ``workers`` setting),
``margin_seconds`` (time kept back from the invocation's limit, default 30), ``page_size``,
``without_consumer``, ``create_destination``, ``from_export`` (an export's S3 URI or
ExportArn: load its data files instead of scanning; ``refused_files`` in the result lists files
that do not match the manifest; ``blocked`` is true once nothing else is left: the loop must
stop on it, ``complete`` stays false).
"""

from __future__ import annotations

from typing import Any, Protocol

from backfill import plan
from backfill.export.load import open_export
from backfill.export.plan import refused, settled
from backfill.preflight import open_for_backfill
from backfill.worker import Engine, Options
from livemigrate.aws import AwsClients, make_clients
from livemigrate.config import Settings, load_settings

DEFAULT_MARGIN = 30.0


class LambdaContext(Protocol):
    def get_remaining_time_in_millis(self) -> int: ...


def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Lambda handler; returns ``{"complete": bool, ...}``."""
    settings = load_settings()
    return invoke(event, context, settings, make_clients(settings))


def invoke(
    event: dict[str, Any], context: LambdaContext, settings: Settings, clients: AwsClients
) -> dict[str, Any]:
    """The handler's work with settings and clients injected (tests call this)."""
    margin = float(event.get("margin_seconds", DEFAULT_MARGIN))
    budget = context.get_remaining_time_in_millis() / 1000.0 - margin
    planning = event.get("action") == "plan"
    if budget <= 1.0 and not planning:
        return {"complete": False, "reason": "not enough time left in this invocation"}
    migration = open_for_backfill(
        settings,
        clients,
        create_destination=bool(event.get("create_destination", False)),
        without_consumer=bool(event.get("without_consumer", False)),
    )
    threads = int(event.get("threads", settings.workers))
    invocations = max(1, int(event.get("workers", 1)))  # the Map state's fan-out
    options = Options(
        workers=threads,
        planned_workers=threads * invocations,  # a segment for every thread of every one
        budget_seconds=max(budget, 1.0),
        page_size=int(event.get("page_size", 1000)),
        total_segments=settings.total_segments,
    )
    # issue 16: an export's data files instead of Scan segments, with the same loop
    where = event.get("from_export")
    export = open_export(str(where), settings, clients) if where else None
    engine = Engine(migration, options) if export is None else export.engine(migration, options)
    segments = engine.plan(claim=not planning)  # a work step runs what it plans itself
    if planning:
        # Idempotent: a second start of the state machine finds the plan and resumes it.
        return {"workers": list(range(invocations)), "total_segments": segments}
    # What is left of the invocation after preflight and planning is the workers' budget.
    budget = context.get_remaining_time_in_millis() / 1000.0 - margin
    complete = engine.run(budget_seconds=max(0.1, budget)) or plan.mark_complete(migration.store)
    done = engine.stats.snapshot()
    files = refused(migration.store)
    return {
        "complete": complete,
        "items_read": done.read,
        "items_written": done.written,
        "superseded": done.superseded,
        "dead_letters": done.dead,
        "refused_files": [key for key, _ in files],
        # Nothing left but refused files: looping again would never complete (the state
        # machine fails on it, naming the fix, instead of invoking forever).
        "blocked": bool(files) and settled(migration.store),
    }
