"""The rollback (``livemigrate rollback``): flip the flag back to the source table.

With a reverse consumer (``livemigrate reverse``, an inverse transform configured) the source has
been kept current since the cutover, and a rollback loses nothing:

1. the reverse consumer must be running and must not have lost records (else refused, listing
   why; ``--force`` rolls back anyway, losing what it did not apply);
2. ``--fenced``: writers using ``livemigrate.client`` pause, the reverse consumer drains the
   destination's stream, then the flag flips back (the write pause is printed). Without a fence
   the flag flips first and the command waits for the reverse consumer to apply what writers
   with a stale flag wrote to the destination.

Without one, the writes made to the destination since the cutover are NOT in the source: the
rollback is allowed within ``--window-seconds`` (default 3600) of the cutover, later only with
``--force``, and says so.

The flip back is one conditional write on the flag's epoch, like the cutover. The forward
consumer keeps running: what the application writes to the source again reaches the destination
(the reverse consumer skips those echoes), so cutting over again later needs no new backfill. If
the cutover swapped a search alias, it is pointed back at the index it was taken from (one
``_aliases`` call). The command's arguments and wiring: ``livemigrate.rollback_cli``.
"""

from __future__ import annotations

from collections.abc import Callable

from livemigrate.clock import Clock, SystemClock
from livemigrate.control import ControlStore
from livemigrate.cutover import (
    CutoverOptions,
    Drain,
    SearchSwitch,
    reason_of,
)
from livemigrate.exitcodes import ExitCode
from livemigrate.flag import Flag, FlagStore
from livemigrate.gates import reverse_problems
from livemigrate.keys import CONSUMER_REVERSE, CUTOVER, ROLLBACK
from livemigrate.transform import load_transform


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
        options: CutoverOptions | None = None,
        max_heartbeat_age: float = 30.0,
        search: SearchSwitch | None = None,
        clock: Clock | None = None,
        out: Callable[[str], None] = print,
    ) -> None:
        self.store = store
        self.flags = flags
        self.window = window_seconds
        self.force = force
        self.inverse = inverse_transform
        self.options = options or CutoverOptions()
        self.max_heartbeat_age = max_heartbeat_age
        self.search = search
        self.clock: Clock = clock or SystemClock()
        self.out = out
        self.write_pause: float | None = None

    def run(self) -> int:
        flag = self.flags.read()
        if flag.active != "destination":
            self.out(f"rollback refused: nothing to roll back, {flag.table} (source) is active")
            return ExitCode.GATES_UNMET
        age = self.clock.now() - flag.flipped_at
        problems = self._reverse_problems() if self.inverse else []
        refusal = self._refusal(age, problems)
        if refusal:
            self.out(refusal)
            return ExitCode.GATES_UNMET
        for problem in problems:
            self.out(f"warning (--force): {problem}")
        keeps_writes = self.inverse is not None and not problems
        flag = self._flip_back(flag, keeps_writes)
        self._search_back()
        if not keeps_writes:
            self.out(
                f"warning: writes made to the destination in the {age:.0f}s since the cutover "
                "are not in the source table; replay them from the destination's stream or "
                "backups."
            )
        self.store.put(
            ROLLBACK,
            {
                "flipped_at": flag.flipped_at,
                "epoch": flag.epoch,
                "reverse": keeps_writes,
                "write_pause": self.write_pause,
            },
        )
        return ExitCode.OK

    def _reverse_problems(self) -> list[str]:
        reverse = self.store.get(CONSUMER_REVERSE)
        return reverse_problems(reverse, self.clock.now(), self.max_heartbeat_age)

    def _refusal(self, age: float, problems: list[str]) -> str | None:
        """Why the rollback must not run (None: go ahead)."""
        if self.inverse is None:
            if self.options.fenced:
                return (
                    "rollback refused: --fenced waits for the reverse consumer, and no inverse "
                    "transform is configured (set LIVEMIGRATE_INVERSE_TRANSFORM and run "
                    "`livemigrate reverse`, or roll back without --fenced)"
                )
            if age > self.window and not self.force:
                return (
                    f"rollback refused: the cutover was {age:.0f}s ago, outside the "
                    f"{self.window:.0f}s window; writes since then exist only in the "
                    "destination. Pass --force to roll back anyway."
                )
            return None
        load_transform(self.inverse)  # fail before the flip if it does not import
        if problems and not self.force:
            listed = "; ".join(problems)
            return (
                f"rollback refused: {listed}. Writes made to the destination since the cutover "
                "would be missing from the source. Start `livemigrate reverse` and run the "
                "rollback again, or pass --force to roll back anyway."
            )
        return None

    def _flip_back(self, flag: Flag, keeps_writes: bool) -> Flag:
        drain = Drain(self.store, CONSUMER_REVERSE, self.options, self.clock, self.out)
        fence_at = None
        before = flag
        if self.options.fenced and keeps_writes:
            flag, fence_at = drain.fence_and_drain(self.flags, flag, "the destination stream")
        try:
            now = self.clock.now()
            frozen = drain.frozen_after(fence_at, now)
            flag = self.flags.write(flag.flipped("source", now, frozen), flag.epoch)
        except BaseException as exc:
            if fence_at is not None:  # lift the fence, say where the flag is, re-raise
                drain.abandon(self.flags, before, reason_of(exc))
            raise
        self.out(f"flag flipped back: active table is now {flag.table} (epoch {flag.epoch})")
        if fence_at is not None:
            self.write_pause = flag.flipped_at - fence_at
            self.out(f"write pause (fence to flip): {self.write_pause:.3f}s")
        elif keeps_writes:
            drain.after_flip(flag, "`livemigrate reverse`")
        if keeps_writes:
            self.out(
                "the reverse consumer applied every destination write to the source; keep "
                "`livemigrate consume` running so the destination follows the source again"
            )
        return flag

    def _search_back(self) -> None:
        record = self.store.get(CUTOVER) or {}
        previous = [str(p) for p in record.get("search_previous") or []]
        if self.search is None or not previous:
            return
        self.search.backend.swap_alias(self.search.alias, previous[0])
        self.out(f"search alias {self.search.alias!r} -> {previous[0]} (back)")
