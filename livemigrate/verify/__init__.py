"""Verification (``livemigrate verify``): prove that transform(source) == destination
(== search index).

See ``livemigrate.verify.engine`` for the method (bucket digests, item diffs only in differing
buckets, consistent rechecks) and ``livemigrate.verify.repair`` for the ``--repair`` rule. The
result is written to the control table (``VERIFY`` item), where the cutover gate reads it.

Without ``--repair`` the command is read-only apart from its ``VERIFY`` result: it never
creates the control table or records the migration. The command's arguments, wiring and exit
codes: ``livemigrate.verify.cli``.
"""

from __future__ import annotations

import json
from typing import Any

from livemigrate.aws import AwsClients
from livemigrate.clock import Clock, SystemClock
from livemigrate.config import Settings
from livemigrate.control import ControlStore
from livemigrate.deadletters import DeadLetters
from livemigrate.destination import DestinationWriter
from livemigrate.errors import PreflightError
from livemigrate.exitcodes import ExitCode
from livemigrate.keys import CONSUMER_SOURCE, META, VERIFY
from livemigrate.migration import Migration, inverse_transform
from livemigrate.tables import describe
from livemigrate.transform import Transformer, load_transform
from livemigrate.verify.engine import KINDS, Hooks, Verifier, VerifyOptions, VerifyReport
from livemigrate.verify.repair import Repairer

HEARTBEAT_STALE = 60.0  # seconds: an older heartbeat means no consumer is running

__all__ = ["Hooks", "VerifyOptions", "VerifyReport", "verify"]


def verify(
    migration: Migration,
    options: VerifyOptions,
    *,
    repair: bool = False,
    search: bool = True,
    clock: Clock | None = None,
    hooks: Hooks | None = None,
) -> VerifyReport:
    """Run one verification and record it in the control table (``VERIFY``)."""
    clock = clock or SystemClock()
    verifier = Verifier(
        migration.clients.dynamodb,
        migration.source,
        migration.destination,
        migration.transformer,
        options,
        clock=clock,
        hooks=hooks,
        consumer_position=lambda: consumer_position(migration.store, clock.now()),
    )
    report = verifier.run(Repairer(verifier, migration.writer) if repair else None)
    settings = migration.settings
    if search and settings.search_url and settings.search_alias:
        report.search = _verify_search(migration, options, clock)
        report.passed = report.passed and bool(report.search.get("passed"))
    record(migration.store, report)
    return report


def consumer_position(store: ControlStore, now: float) -> float | None:
    """Stream time the source consumer has applied up to; None if it is not running.

    ``lag_seconds`` is the age of the last applied record (0 when caught up), so
    ``heartbeat_at - lag_seconds`` is the creation time of what it applied last.
    """
    item = store.get(CONSUMER_SOURCE)
    if not item or now - float(item.get("heartbeat_at", 0)) > HEARTBEAT_STALE:
        return None
    return float(item["heartbeat_at"]) - float(item.get("lag_seconds", 0))


def _verify_search(migration: Migration, options: VerifyOptions, clock: Clock) -> dict[str, Any]:
    from livemigrate.search.clients import open_backend
    from livemigrate.search.targets import ControlTargets
    from livemigrate.verify.search import SearchVerifier

    settings = migration.settings
    default = f"{settings.search_alias}-{settings.migration_id}"
    index = ControlTargets(migration.store, default).current().indices[0]
    backend = open_backend(settings)
    if not backend.index_exists(index):
        return {"index": index, "passed": False, "error": f"index {index!r} does not exist"}
    verifier = SearchVerifier(
        migration.clients.dynamodb,
        migration.destination,
        backend,
        index,
        options=options,
        clock=clock,
    )
    return verifier.run().as_dict()


def record(store: ControlStore, report: VerifyReport) -> None:
    """Write the ``VERIFY`` item the cutover gate reads."""
    values: dict[str, Any] = {
        "passed": report.passed,
        "at": report.at,
        "seconds": report.seconds,
        "source_items": report.source_items,
        "destination_items": report.destination_items,
        "transform_errors": report.transform_errors,
        "tombstones": report.tombstones,  # the tombstone gate wants 0 after the purge
        **report.counts,
        "collisions": report.collisions,
    }
    if report.search is not None:
        values["search_passed"] = bool(report.search.get("passed"))
        values["search_index"] = str(report.search.get("index"))
    store.put(VERIFY, values)


def render(report: VerifyReport) -> str:
    verdict = "PARITY" if report.passed else "DIFFERENCES"
    lines = [
        f"verify: {verdict} in {report.seconds:.1f}s",
        f"  source (transformed) items {report.source_items}, destination items "
        f"{report.destination_items}, transform errors {report.transform_errors}",
        f"  buckets {report.buckets}, differing {report.differing_buckets}; first-pass "
        f"differences {report.first_pass_differences}, resolved by recheck "
        f"{report.resolved_by_recheck}",
        "  " + ", ".join(f"{kind} {report.counts[kind]}" for kind in KINDS),
        f"  collisions {report.collisions} (destination keys two source items map to)",
    ]
    lines += [f"    collision: {json.dumps(c, sort_keys=True)}" for c in report.collision_examples]
    for kind in KINDS:
        for example in report.examples[kind]:
            lines.append(f"    {kind}: {json.dumps(example, sort_keys=True)}")
    if report.repairs:
        done = ", ".join(f"{k} {v}" for k, v in sorted(report.repairs.items()))
        lines.append(f"  repair: {done} (run verify again to confirm parity)")
    if report.search is not None:
        s = report.search
        counts = ", ".join(f"{k} {s.get(k, 0)}" for k in KINDS)
        state = "ok" if s.get("passed") else f"FAILED {s.get('error', '')}"
        lines.append(f"  search index {s.get('index')}: {state} ({counts})")
        if not s.get("passed"):
            lines.append(
                "    fix: `livemigrate search resync` rebuilds the index from the destination "
                "(--repair repairs the destination table only, never the search index)"
            )
    return "\n".join(lines)


def open_for_verify(settings: Settings, clients: AwsClients) -> Migration:
    """The migration to verify, read without writing (no control table created, no META).

    Raises ``PreflightError`` when nothing has run for the migration yet.
    """
    store = ControlStore(clients.dynamodb, settings.control_table, settings.migration_id)
    if not store.exists() or store.get(META) is None:
        raise PreflightError(
            f"nothing to verify: migration {settings.migration_id!r} has not started (no record "
            f"in control table {settings.control_table!r})",
            "start it with `livemigrate consume` and `livemigrate backfill`, then verify "
            "(check the migration id and LIVEMIGRATE_CONTROL_TABLE if it did run)",
        )
    source = describe(clients.dynamodb, settings.source_table, "source")
    destination = describe(clients.dynamodb, settings.destination_table, "destination")
    transformer = Transformer(
        load_transform(settings.transform), destination.key_names, destination.key_types
    )
    writer = DestinationWriter(
        clients.dynamodb,
        settings.destination_table,
        destination.key_names,
        settings.migration_id,
        mark_deletes=inverse_transform(settings, store.get(META) or {}) is not None,
    )
    return Migration(
        settings, clients, store, DeadLetters(store), source, destination, transformer, writer
    )


def exit_code(report: VerifyReport) -> ExitCode:
    """Differences first; then items that exist in the source but could not be migrated."""
    if not report.passed:
        return ExitCode.DIFFERENCES
    if report.transform_errors:
        return ExitCode.NOT_MIGRATED
    return ExitCode.OK
