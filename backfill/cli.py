"""``livemigrate backfill``: copy every source item through the transform, resumably.

Exit status (``livemigrate.exitcodes``): 0 only when the whole table is copied (PLAN state
complete) and no item of it is dead-lettered; 5 when it is complete but items went to dead
letters (they are not in the destination); 4 when the budget ran out first (run the command
again: it continues from the saved checkpoints); 130 on Ctrl-C / SIGTERM (the workers finish
the pages in flight, save their position and release their leases, then the command exits);
2 on bad input. With ``--from-export``: 5 also when a data file of the export does not match
its manifest (checksum, item count or ETag): every other file is loaded, nothing of that one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
from typing import Any

from backfill import eta_guard, plan
from backfill.export import plan as export_plan
from backfill.export.load import dry_run as export_dry_run
from backfill.export.load import open_export
from backfill.preflight import WITHOUT_CONSUMER_RISK, dry_run, open_for_backfill
from backfill.progress import Progress
from backfill.worker import JOIN_WAKE_SECONDS, Engine, Options
from livemigrate.argtypes import non_negative_int, positive_float, positive_int
from livemigrate.aws import AwsClients
from livemigrate.config import Settings
from livemigrate.counters import count
from livemigrate.deadletters import DeadLetters
from livemigrate.exitcodes import ExitCode
from livemigrate.hooks import Hooks
from livemigrate.interrupts import on_first_signal
from livemigrate.migration import Migration
from livemigrate.retention import BackfillGuard
from livemigrate.status import to_json

log = logging.getLogger(__name__)

DRY_RUN_SAMPLE = 5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The backfill command's flags (defaults come from the settings)."""
    add = parser.add_argument
    add(
        "--workers",
        type=positive_int,
        help="worker threads in this process (default: the `workers` setting, 4)",
    )
    add("--processes", type=positive_int, default=1, help="worker processes to run (default: 1)")
    add(
        "--budget-seconds",
        type=positive_float,
        help="stop after this long with the position saved (default: `budget_seconds`, 840)",
    )
    add("--dry-run", action="store_true", help="transform a sample, print it; write nothing")
    add("--json", action="store_true", help="print the outcome as JSON on stdout (text on stderr)")
    add(
        "--total-segments",
        type=positive_int,
        help="Scan segments of a new plan (default: chosen from the table size)",
    )
    add(
        "--hot-key",
        action="append",
        default=[],
        metavar="PK",
        help="a partition key known to be hot: split at first sight (repeatable)",
    )
    add(
        "--from-export",
        metavar="S3_URI_OR_ARN",
        help="load a DynamoDB export (s3://bucket/prefix/AWSDynamoDB/<ExportId>/ or its "
        "ExportArn) instead of scanning the source: no read capacity used (README)",
    )
    add("--create-destination", action="store_true", help="create a missing destination table")
    add(
        "--without-consumer",
        action="store_true",
        help=f"start although no stream consumer has started; {WITHOUT_CONSUMER_RISK}",
    )
    add(
        "--force",
        action="store_true",
        help="go on although the ETA exceeds the stream's retention minus the margin "
        "(rule 9; changes are then at risk of being trimmed unapplied)",
    )
    add("--guarded-by-parent", action="store_true", help=argparse.SUPPRESS)
    add(
        "--page-size",
        type=positive_int,
        default=1000,
        help="items per Scan/Query page, the checkpoint unit (default: 1000)",
    )
    add(
        "--lease-seconds",
        type=positive_float,
        default=30.0,
        help="a dead worker's segment is taken over after this (default: 30)",
    )
    add("--write-threads", type=positive_int, default=8, help="concurrent puts per worker (8)")
    add(
        "--split-ways",
        type=non_negative_int,
        default=0,
        help="sub-ranges per hot key (default: 2 x workers)",
    )
    add("--hot-pages", type=positive_int, default=3, help="pages of one key before it is hot (3)")
    add(
        "--hot-min-items",
        type=positive_int,
        default=2000,
        help="items of one key before it is hot (default: 2000)",
    )


def options_from(args: argparse.Namespace, settings: Settings) -> Options:
    return Options(
        workers=args.workers or settings.workers,
        budget_seconds=args.budget_seconds or settings.budget_seconds,
        lease_seconds=args.lease_seconds,
        page_size=args.page_size,
        write_threads=args.write_threads,
        total_segments=args.total_segments or settings.total_segments,
        planned_workers=args.processes * (args.workers or settings.workers),
        hot_keys=tuple(args.hot_key),
        hot_pages=args.hot_pages,
        hot_min_items=args.hot_min_items,
        split_ways=args.split_ways,
    )


def run(args: argparse.Namespace, settings: Settings, clients: AwsClients) -> int:
    """Run the command; see the module docstring for exit codes."""
    export = open_export(args.from_export, settings, clients) if args.from_export else None
    if args.dry_run and export is not None:
        return export_dry_run(export, settings, clients, DRY_RUN_SAMPLE, sys.stdout)
    if args.dry_run:
        return dry_run(settings, clients, DRY_RUN_SAMPLE, sys.stdout)
    migration = open_for_backfill(
        settings,
        clients,
        create_destination=args.create_destination,
        without_consumer=args.without_consumer,
    )
    options = options_from(args, settings)
    was_complete = plan.plan_state(migration.store) == plan.COMPLETE
    engine = Engine(migration, options) if export is None else export.engine(migration, options)
    # Once, before any child process races to it; a process that runs alone creates its
    # first units claimed for its workers.
    engine.plan(claim=args.processes == 1)

    def budget_over() -> bool:
        return engine.budget.expired()  # looked up each time: engine.run() starts a new budget

    for limiter in (engine.read_limiter, engine.write_limiter):
        # A paused run (livemigrate throttle --pause) still ends at its budget or on Ctrl-C.
        limiter.interrupt = budget_over
    stopped: list[bool] = []
    already = int(count(migration.store.metrics(), "items_read"))
    watch = eta_guard.for_run(
        args, settings, clients, migration=migration, already=already, engine=engine
    )  # rule 9
    if args.processes > 1:
        # Each child stops itself on the signal (same process group); the parent waits.
        with watch as guard:
            _run_children(args, settings, args.processes, stopped, guard)
    else:
        on_first_signal(lambda: _stop(engine, stopped), _say)
        total = migration.source.item_count if export is None else export.export.item_count
        with (
            watch as guard,
            Progress(engine.stats, total, already, sys.stderr),
        ):
            engine.run()
    if guard is not None and guard.refusal:
        print(guard.refusal, file=sys.stderr)
        return ExitCode.RETENTION_RISK
    if not args.json:
        return _verdict(migration, options, interrupted=bool(stopped), was_complete=was_complete)
    with contextlib.redirect_stdout(sys.stderr):  # --json: only JSON on stdout
        code = _verdict(migration, options, interrupted=bool(stopped), was_complete=was_complete)
    print(json.dumps(summary(migration, ExitCode(code)), sort_keys=True))
    return code


def summary(migration: Migration, code: ExitCode) -> dict[str, Any]:
    """``backfill --json``: the outcome and the migration's counters, numbers as numbers."""
    store = migration.store
    units = list(plan.units(store, plan.SEG_PREFIX)) + list(plan.units(store, plan.SPLIT_PREFIX))
    metrics = to_json(store.metrics())
    return {
        "code": int(code),
        "outcome": code.name,
        "state": plan.plan_state(store),
        "segments_done": sum(1 for unit in units if unit.done),
        "segments_total": len(units),
        "items_read": count(metrics, "items_read"),
        "items_written": count(metrics, "items_written"),
        "superseded_by_live_write": count(metrics, "superseded_by_live_write"),
        "items_already_copied": count(metrics, "items_already_copied"),
        "dead_letters": _backfill_dead_letters(migration),
    }


def _say(text: str) -> None:
    print(f"livemigrate backfill: {text}", file=sys.stderr, flush=True)


def _stop(engine: Engine, stopped: list[bool]) -> None:
    """End the budget now: each worker finishes its page, checkpoints, releases its lease."""
    stopped.append(True)
    engine.stop()


def _verdict(
    migration: Migration,
    options: Options,
    *,
    interrupted: bool = False,
    was_complete: bool = False,
) -> int:
    """The exit code, and what to say; ``was_complete``: before this run (no hook then)."""
    store = migration.store
    if plan.plan_state(store) == plan.COMPLETE or plan.mark_complete(store):
        metrics = store.metrics()
        dead = _backfill_dead_letters(migration)
        print(
            f"backfill complete: {migration.source.name} -> {migration.destination.name}; "
            f"read {count(metrics, 'items_read')}, written {count(metrics, 'items_written')}, "
            f"superseded by live writes {count(metrics, 'superseded_by_live_write')}, "
            f"already copied (pages read again) {count(metrics, 'items_already_copied')}, "
            f"dead letters {dead}"
        )
        if not was_complete:
            Hooks.of(migration.settings).fire(
                "backfill_complete",
                items_read=count(metrics, "items_read"),
                items_written=count(metrics, "items_written"),
                dead_letters=dead,
            )
        if dead:
            print(
                f"backfill: {dead} item(s) went to dead letters and are NOT in the destination.\n"
                "  fix: see them with `livemigrate status`; fix the transform or the items and "
                "replay them, or acknowledge them at the cutover (--ack-dead-letters)",
                file=sys.stderr,
            )
            return ExitCode.NOT_MIGRATED
        return ExitCode.OK
    if export_plan.refused(store) and export_plan.settled(store):
        return _refused(export_plan.refused(store))
    segs = list(plan.units(store, plan.SEG_PREFIX))
    splits = list(plan.units(store, plan.SPLIT_PREFIX))
    done = sum(u.done for u in segs) + sum(u.done for u in splits)
    total = len(segs) + len(splits)
    if interrupted:
        print(
            f"backfill interrupted: {done} of {total} segments/splits done; position saved, "
            "leases released.\n  fix: run `livemigrate backfill` again to continue from the "
            "checkpoints",
            file=sys.stderr,
        )
        return ExitCode.INTERRUPTED
    print(
        f"backfill not complete: the budget of {options.budget_seconds:g}s ran out with "
        f"{done} of {total} segments/splits done (position saved).\n"
        "  fix: run `livemigrate backfill` again (any number of times, from any machine) to "
        "continue from the checkpoints; `livemigrate status` shows progress",
        file=sys.stderr,
    )
    return ExitCode.INCOMPLETE


def _refused(files: list[tuple[str, str]]) -> int:
    """Every other data file is loaded; these do not match the export's manifest."""
    lines = "\n".join(f"  {key}: {reason}" for key, reason in files)
    print(
        f"backfill from export not complete: {len(files)} data file(s) do not match the export's "
        f"manifest; nothing was written from them:\n{lines}\n"
        "  fix: request a new export (`livemigrate export start`) and load it under a new "
        "migration id, or use the Scan backfill (without --from-export)",
        file=sys.stderr,
    )
    return ExitCode.NOT_MIGRATED


def _backfill_dead_letters(migration: Migration) -> int:
    """Unacknowledged dead letters the backfill wrote (those items are not in the destination)."""
    letters = DeadLetters(migration.store).list()
    return sum(1 for letter in letters if letter.origin == "backfill" and not letter.acknowledged)


def child_argv(args: argparse.Namespace) -> list[str]:
    """Flags for a worker process (``python -m backfill``), without --processes."""
    argv = ["--page-size", str(args.page_size), "--lease-seconds", str(args.lease_seconds)]
    argv += ["--write-threads", str(args.write_threads), "--split-ways", str(args.split_ways)]
    argv += ["--hot-pages", str(args.hot_pages), "--hot-min-items", str(args.hot_min_items)]
    for name in ("workers", "budget_seconds", "total_segments"):
        value = getattr(args, name)
        if value:
            argv += [f"--{name.replace('_', '-')}", str(value)]
    for key in args.hot_key:
        argv += ["--hot-key", key]
    if args.without_consumer:
        argv.append("--without-consumer")
    if args.from_export:
        argv += ["--from-export", args.from_export]
    return [*argv, "--guarded-by-parent"]  # the parent watches the ETA of all of them


def _run_children(
    args: argparse.Namespace,
    settings: Settings,
    count: int,
    stopped: list[bool],
    guard: BackfillGuard | None = None,
) -> None:
    env = {**os.environ, "LIVEMIGRATE_MIGRATION_ID": settings.migration_id}
    command = [sys.executable, "-m", "backfill", *child_argv(args)]
    # Own process groups: a terminal's Ctrl-C reaches only this process, which passes ONE
    # SIGTERM on (a second signal would make a child stop at once, mid-page).
    children = [subprocess.Popen(command, env=env, start_new_session=True) for _ in range(count)]

    def stop_children() -> None:
        stopped.append(True)
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    on_first_signal(stop_children, _say)
    if guard is not None:
        guard.stop = stop_children
    for child in children:
        while True:
            try:
                # In short waits: a signal the kernel hands to another thread of this process
                # (the ETA guard's) runs its handler only once the main thread wakes.
                child.wait(timeout=JOIN_WAKE_SECONDS)
                break
            except subprocess.TimeoutExpired:
                continue
            except KeyboardInterrupt:  # a second signal: the children are already stopping
                continue
