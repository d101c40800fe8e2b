"""``livemigrate backfill``: copy every source item through the transform, resumably.

Exit status: 0 only when the whole table is copied (PLAN state complete); 4 when the budget ran
out first (run the command again: it continues from the saved checkpoints); 2 on bad input.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys

from backfill import plan
from backfill.preflight import WITHOUT_CONSUMER_RISK, dry_run, open_for_backfill
from backfill.progress import Progress
from backfill.worker import Engine, Options
from livemigrate.aws import AwsClients
from livemigrate.config import Settings
from livemigrate.migration import Migration

log = logging.getLogger(__name__)

EXIT_INCOMPLETE = 4
DRY_RUN_SAMPLE = 5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The backfill command's flags (defaults come from the settings)."""
    add = parser.add_argument
    add("--workers", type=int, help="worker threads in this process (default: settings.workers)")
    add("--processes", type=int, default=1, help="run this many worker processes (default 1)")
    add("--budget-seconds", type=float, help="stop and save position after this long (840)")
    add("--dry-run", action="store_true", help="transform a sample, print it; write nothing")
    add("--total-segments", type=int, help="Scan segments of a new plan (default: by size)")
    add(
        "--hot-key",
        action="append",
        default=[],
        metavar="PK",
        help="a partition key known to be hot: split at first sight (repeatable)",
    )
    add("--create-destination", action="store_true", help="create a missing destination table")
    add(
        "--without-consumer",
        action="store_true",
        help=f"start although no stream consumer has started; {WITHOUT_CONSUMER_RISK}",
    )
    add("--page-size", type=int, default=1000, help="items per Scan/Query page (checkpoint unit)")
    add("--lease-seconds", type=float, default=30.0, help="lease time-to-live (default 30)")
    add("--write-threads", type=int, default=8, help="concurrent puts per worker (default 8)")
    add("--split-ways", type=int, default=0, help="sub-ranges per hot key (default 2x workers)")
    add("--hot-pages", type=int, default=3, help="pages of one key before it counts as hot")
    add("--hot-min-items", type=int, default=2000, help="items of one key before it is hot")


def options_from(args: argparse.Namespace, settings: Settings) -> Options:
    return Options(
        workers=args.workers or settings.workers,
        budget_seconds=args.budget_seconds or settings.budget_seconds,
        lease_seconds=args.lease_seconds,
        page_size=args.page_size,
        write_threads=args.write_threads,
        total_segments=args.total_segments or settings.total_segments,
        hot_keys=tuple(args.hot_key),
        hot_pages=args.hot_pages,
        hot_min_items=args.hot_min_items,
        split_ways=args.split_ways,
    )


def run(args: argparse.Namespace, settings: Settings, clients: AwsClients) -> int:
    """Run the command; see the module docstring for exit codes."""
    if args.dry_run:
        return dry_run(settings, clients, DRY_RUN_SAMPLE, sys.stdout)
    migration = open_for_backfill(
        settings,
        clients,
        create_destination=args.create_destination,
        without_consumer=args.without_consumer,
    )
    options = options_from(args, settings)
    if args.processes > 1:
        engine = Engine(migration, options)
        engine.plan()  # once, before the children race to it
        _run_children(args, settings, args.processes)
    else:
        engine = Engine(migration, options)
        engine.plan()
        already = int(migration.store.metrics().get("items_read", 0))
        with Progress(engine.stats, migration.source.item_count, already, sys.stderr):
            engine.run()
    return _verdict(migration, options)


def _verdict(migration: Migration, options: Options) -> int:
    store = migration.store
    if plan.plan_state(store) == plan.COMPLETE or plan.mark_complete(store):
        metrics = store.metrics()
        print(
            f"backfill complete: {migration.source.name} -> {migration.destination.name}; "
            f"read {metrics.get('items_read', 0)}, written {metrics.get('items_written', 0)}, "
            f"superseded by live writes {metrics.get('superseded_by_live_write', 0)}, "
            f"dead letters {metrics.get('dead_letters', 0)}"
        )
        return 0
    segs = list(plan.units(store, plan.SEG_PREFIX))
    splits = list(plan.units(store, plan.SPLIT_PREFIX))
    done = sum(u.done for u in segs) + sum(u.done for u in splits)
    print(
        f"backfill not complete: the budget of {options.budget_seconds:g}s ran out with "
        f"{done} of {len(segs) + len(splits)} segments/splits done (position saved).\n"
        "  fix: run `livemigrate backfill` again (any number of times, from any machine) to "
        "continue from the checkpoints; `livemigrate status` shows progress",
        file=sys.stderr,
    )
    return EXIT_INCOMPLETE


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
    return argv


def _run_children(args: argparse.Namespace, settings: Settings, count: int) -> None:
    env = {**os.environ, "LIVEMIGRATE_MIGRATION_ID": settings.migration_id}
    command = [sys.executable, "-m", "backfill", *child_argv(args)]
    children = [subprocess.Popen(command, env=env) for _ in range(count)]
    for child in children:
        child.wait()
