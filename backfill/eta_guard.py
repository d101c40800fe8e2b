"""The backfill's side of the retention guard (rule 9): watch this run's ETA.

The decisions (the limit, refuse or warn, the message) are ``livemigrate.retention``'s; this
module only wires them to a running backfill: the progress of this process (one process) or of
the control table's counter (``--processes N``: the parent watches, its children do not).
"""

from __future__ import annotations

import argparse
import contextlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from backfill.worker import Engine
from livemigrate.aws import AwsClients
from livemigrate.config import Settings
from livemigrate.control import ControlStore
from livemigrate.migration import Migration
from livemigrate.retention import BackfillGuard, record, source_retention

# The ETA is first measured once this many pages are read (the first pages are slower or
# faster than the rest: connection set-up, a warm cache; a few pages even them out).
FIRST_PAGES = 3
CHECK_SECONDS = 5.0


@contextmanager
def watching(
    settings: Settings,
    clients: AwsClients,
    store: ControlStore,
    *,
    progress: Callable[[], int],
    total: int,
    already: int,
    page_size: int,
    stop: Callable[[], None],
    forced: bool,
    interval: float | None = None,
) -> Iterator[BackfillGuard]:
    """A guard checking the ETA every ``interval`` seconds while the block runs."""
    retention = source_retention(settings, clients)
    record(store, retention)
    guard = BackfillGuard(
        retention,
        progress,
        total=total,
        already=already,
        min_items=FIRST_PAGES * page_size,
        stop=stop,
        forced=forced,
        store=store,
    )
    done = threading.Event()
    thread = guard.watch(done, CHECK_SECONDS if interval is None else interval)
    try:
        yield guard
    finally:
        done.set()
        thread.join()


def for_run(
    args: argparse.Namespace,
    settings: Settings,
    clients: AwsClients,
    *,
    migration: Migration,
    already: int,
    engine: Engine,
) -> contextlib.AbstractContextManager[BackfillGuard | None]:
    """The guard of one ``livemigrate backfill`` run; none in a child its parent watches."""
    if args.guarded_by_parent:
        return contextlib.nullcontext()
    store = migration.store
    if args.processes > 1:  # the children's counter in the control table

        def progress() -> int:
            return int(store.metrics().get("items_read", 0)) - already
    else:

        def progress() -> int:
            return engine.stats.snapshot().read

    def stop() -> None:  # several processes: the parent replaces it by stopping its children
        if args.processes == 1:
            engine.stop()  # pages in flight finish, positions are saved

    return watching(
        settings,
        clients,
        store,
        progress=progress,
        total=migration.source.item_count,
        already=already,
        page_size=args.page_size,
        stop=stop,
        forced=args.force,
    )
