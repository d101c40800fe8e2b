"""The backfill's side of the retention guard (rule 9): watch this run's ETA.

The decisions (the limit, refuse or warn, the message) are ``livemigrate.retention``'s; this
module only wires them to a running backfill: the progress of this process (one process) or of
the control table's counter (``--processes N``: the parent watches, its children do not).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from livemigrate.aws import AwsClients
from livemigrate.config import Settings
from livemigrate.control import ControlStore
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
