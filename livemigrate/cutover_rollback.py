"""``livemigrate rollback``: flip the flag back to the source table, within a window.

The flip back is one conditional write on the flag's epoch, like the cutover. It is allowed
within ``--window-seconds`` (default 3600) of the cutover's flip, later only with ``--force``:
the longer the destination has been active, the more writes the source lacks.

Writes made to the destination after the cutover are NOT in the source table unless a reverse
consumer kept it current: the stream consumer engine run with consumer name ``reverse`` on the
destination's stream, applying an inverse transform (``--inverse-transform pkg.mod:fn``) into
the source. That wiring is not built yet (see the command's output); with an inverse transform
given, the command checks that it imports and says how the reverse consumer is to be run.

If the cutover swapped a search alias, it is pointed back at the index it was taken from (one
``_aliases`` call). Exit codes: 0 rolled back, 1 refused, 2 errors.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from livemigrate.aws import AwsClients
from livemigrate.clock import Clock, SystemClock
from livemigrate.config import Settings
from livemigrate.control import ControlStore
from livemigrate.cutover import CUTOVER_ITEM, SearchSwitch, search_switch
from livemigrate.flag import FlagStore, open_flag_store
from livemigrate.transform import load_transform


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--window-seconds",
        type=float,
        default=3600.0,
        help="refuse once the cutover is older than this (default 3600)",
    )
    parser.add_argument("--force", action="store_true", help="roll back after the window")
    parser.add_argument(
        "--inverse-transform",
        help="pkg.mod:fn mapping destination items back to source items (reverse consumer)",
    )
    parser.add_argument("--flag-store", choices=("control", "ssm"), default="control")


class Rollback:
    """One rollback run."""

    def __init__(
        self,
        store: ControlStore,
        flags: FlagStore,
        *,
        window_seconds: float = 3600.0,
        force: bool = False,
        inverse_transform: str | None = None,
        search: SearchSwitch | None = None,
        clock: Clock | None = None,
        out: Callable[[str], None] = print,
    ) -> None:
        self.store = store
        self.flags = flags
        self.window = window_seconds
        self.force = force
        self.inverse = inverse_transform
        self.search = search
        self.clock: Clock = clock or SystemClock()
        self.out = out

    def run(self) -> int:
        flag = self.flags.read()
        if flag.active != "destination":
            self.out(f"rollback refused: nothing to roll back, {flag.table} (source) is active")
            return 1
        age = self.clock.now() - flag.flipped_at
        if age > self.window and not self.force:
            self.out(
                f"rollback refused: the cutover was {age:.0f}s ago, outside the "
                f"{self.window:.0f}s window; writes since then exist only in {flag.table}. "
                "Pass --force to roll back anyway."
            )
            return 1
        if self.inverse:
            load_transform(self.inverse)  # fail before the flip if it does not import
        flag = self.flags.write(flag.flipped("source", self.clock.now()), flag.epoch)
        self.out(f"flag flipped back: active table is now {flag.table} (epoch {flag.epoch})")
        self._search_back()
        self._warn_about_writes(age)
        return 0

    def _search_back(self) -> None:
        record = self.store.get(CUTOVER_ITEM) or {}
        previous = [str(p) for p in record.get("search_previous") or []]
        if self.search is None or not previous:
            return
        self.search.backend.swap_alias(self.search.alias, previous[0])
        self.out(f"search alias {self.search.alias!r} -> {previous[0]} (back)")

    def _warn_about_writes(self, age: float) -> None:
        if self.inverse:
            self.out(
                f"inverse transform {self.inverse} imports. The reverse consumer (consumer "
                "name 'reverse', reading the destination's stream, applying the inverse "
                "transform into the source) is not wired into `livemigrate consume` yet, so "
                "it did not run."
            )
        self.out(
            f"warning: writes made to the destination in the {age:.0f}s since the cutover are "
            "not in the source table; replay them from the destination's stream or backups."
        )


def run(args: argparse.Namespace, settings: Settings, clients: AwsClients) -> int:
    store = ControlStore(clients.dynamodb, settings.control_table, settings.migration_id)
    flags = open_flag_store(
        args.flag_store, store, clients.ssm, settings.source_table, settings.destination_table
    )
    return Rollback(
        store,
        flags,
        window_seconds=args.window_seconds,
        force=args.force,
        inverse_transform=args.inverse_transform,
        search=search_switch(settings, store),
    ).run()
