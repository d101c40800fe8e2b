"""The cutover (``livemigrate cutover``): check every gate, then flip the active-table flag
(rule 10).

1. Every gate is checked (``livemigrate.gates``) and every unmet one is listed with why and
   what to do. ``--dry-run`` stops here.
2. ``--fenced``: one conditional write sets ``fenced`` on the flag (writers using
   ``livemigrate.client`` pause); the command waits ``--client-ttl`` plus a margin (writers
   that read the flag before the fence have decided by then), then for a consumer heartbeat
   newer than that with nothing left to apply. If the consumer does not drain in time, the
   fence is lifted and nothing is flipped.
3. The flip: ONE conditional write of the flag on its epoch (active = destination, fence off).
   With ``--fenced``, the write pause (fence to flip) is measured and printed.
4. If search is configured, the alias is swapped to the new index in ONE ``_aliases`` call.
5. Without a fence, writers that still had the old flag cached may write to the source for up
   to ``--client-ttl``: the command waits until the consumer has drained those (the source is
   quiet) or ``--drain-timeout`` passes.

What it did is recorded in the ``CUTOVER`` control-table item (rollback reads it). An aborted
run changes nothing but the flag's epoch: fencing is a flag write, and so is lifting the fence,
so the epoch moves on by two (it never goes back, or a concurrent operator's stale
compare-and-set could succeed); dead letters are acknowledged only after the flip and the
CUTOVER item is written only then. The command's arguments, wiring and exit codes:
``livemigrate.cutover_cli``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from livemigrate.aws import AwsClients
from livemigrate.clock import Clock, SystemClock
from livemigrate.config import Settings
from livemigrate.control import ControlStore
from livemigrate.deadletters import DeadLetters
from livemigrate.errors import LivemigrateError, PreflightError
from livemigrate.exitcodes import ExitCode
from livemigrate.flag import Flag, FlagStore
from livemigrate.gates import (
    LAMBDA_MODE,
    Gate,
    Policy,
    check_all,
    read_snapshot,
    unmet,
)
from livemigrate.interrupts import deferred
from livemigrate.keys import CONSUMER_SOURCE, CUTOVER, META, shard_prefix
from livemigrate.migration import inverse_transform
from livemigrate.replication import ARM_WAIT
from livemigrate.watermark import watermark_of

if TYPE_CHECKING:
    from livemigrate.lambda_mode import FailureQueue, Watermarks
    from livemigrate.search.backend import SearchBackend


class DrainTimeout(LivemigrateError):
    """The consumer did not catch up in time (a fenced cutover is then abandoned)."""

    exit_code = ExitCode.GATES_UNMET


def describe_flag(flag: Flag, now: float) -> str:
    """One line for people: which table is active, the epoch and the fence."""
    fence = "not fenced"
    if flag.fenced and flag.is_fenced(now):
        fence = f"FENCED until {_utc(flag.fenced_until)}"
    elif flag.fenced:
        fence = f"fence expired at {_utc(flag.fenced_until)} (writers no longer wait)"
    return f"active={flag.active} table={flag.table} epoch={flag.epoch}, {fence}"


def _utc(at: float) -> str:
    return datetime.fromtimestamp(at, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def reason_of(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return f"interrupted ({str(exc) or 'SIGINT'})"
    return f"stopped by an error ({type(exc).__name__})"


@dataclass(frozen=True)
class CutoverOptions:
    dry_run: bool = False
    fenced: bool = False
    policy: Policy = field(default_factory=Policy)
    client_ttl: float = 1.0  # the applications' flag cache TTL (ActiveTable ttl)
    margin: float = 0.5  # beyond client_ttl: an in-flight write's own duration
    # Every writer uses the client's checked writes (a transaction conditioned on the flag's
    # epoch): the fence itself stops them, so there is no cache TTL or in-flight write to wait
    # out, only the stream's propagation (consumer_margin).
    checked_writes: bool = False
    # A heartbeat reports what the consumer's LAST poll saw; a poll may precede its heartbeat
    # by up to the poll interval plus a GetRecords round trip, so ask for a heartbeat at least
    # this much later than the last possible source write.
    consumer_margin: float = 2.0
    fence_seconds: float = 60.0  # writers wait at most this (a crashed cutover frees them)
    drain_timeout: float = 60.0
    drain_lag: float = 1.0  # lag_seconds counted as drained
    # A change source that delivers out of order (Kinesis, rule 15): the drain waits for the
    # consumer's watermark to pass the fence plus this delivery margin (kinesis_delivery_margin)
    # instead of for reads past the fence; None for DynamoDB Streams.
    watermark_margin: float | None = None
    poll: float = 0.1


@dataclass
class SearchSwitch:
    """The alias swap: the backend, the alias and the index the sink keeps current."""

    backend: SearchBackend
    alias: str
    index: str


@dataclass
class CutoverResult:
    code: int
    gates: list[Gate]
    flag: Flag | None = None
    write_pause: float | None = None
    drained: bool | None = None
    search_previous: list[str] = field(default_factory=list)


def drained(consumer: dict[str, Any] | None, since: float, drain_lag: float) -> bool:
    """The consumer reported, from reads sent after ``since``, that nothing is left to apply."""
    if not consumer:
        return False
    read_from = consumer.get("read_from", consumer.get("heartbeat_at", 0))
    return (
        float(read_from) >= since
        and int(consumer.get("records_behind", 1)) == 0
        and float(consumer.get("lag_seconds", float("inf"))) <= drain_lag
    )


def shards_drained(
    shards: list[dict[str, Any]], since: float, drain_lag: float, now: float
) -> bool:
    """Every unfinished shard is held, and its holder read it after ``since`` and found nothing
    left (each process reports its own shards; the CONSUMER item is shared by all of them)."""
    for shard in shards:
        if shard.get("finished"):
            continue
        held = shard.get("lease_owner") and float(shard.get("lease_expires", 0)) > now
        if not held or float(shard.get("read_from", 0)) < since:
            return False
        if int(shard.get("behind", 1)) != 0 or float(shard.get("lag_seconds", 0)) > drain_lag:
            return False
    return True


class Drain:
    """Fencing writers and waiting until one consumer has applied everything (cutover, rollback).

    Parameters
    ----------
    store:
        The control store holding the consumer's heartbeat.
    consumer_sk:
        ``CONSUMER#source`` for the cutover, ``CONSUMER#reverse`` for a rollback.
    options:
        Timeouts and margins (``CutoverOptions``).
    """

    def __init__(
        self,
        store: ControlStore,
        consumer_sk: str,
        options: CutoverOptions,
        clock: Clock,
        out: Callable[[str], None],
    ) -> None:
        self.store = store
        self.consumer_sk = consumer_sk
        self.options = options
        self.clock = clock
        self.out = out

    def fence_and_drain(self, flags: FlagStore, flag: Flag, stream: str) -> tuple[Flag, float]:
        """Fence writers, wait for the consumer to drain; the fenced flag and the fence time.

        Any way out but success (drain timeout, Ctrl-C, SIGTERM, an error) lifts the fence
        before it returns (``abandon``).
        """
        now = self.clock.now()
        unfenced = flag
        try:
            flag = flags.write(flag.fence(now, self.options.fence_seconds), flag.epoch)
            self.out(
                f"writers fenced at epoch {flag.epoch} (for at most {self.options.fence_seconds}s)"
            )
            since = now + self.quiet_after()
            deadline = min(now + self.options.drain_timeout, flag.fenced_until - 1.0)
            if self.wait(since, deadline):
                self.out(f"consumer drained {stream}: the {flag.active} is quiet ({flag.table})")
                return flag, now
        except BaseException as exc:
            self.abandon(flags, unfenced, reason_of(exc))
            raise
        self.abandon(flags, unfenced, "the consumer did not drain in time")
        raise DrainTimeout(
            f"the consumer did not drain {stream} before the fence deadline; the fence was "
            f"lifted, writers continue on {flag.table}, nothing was flipped",
            "check `livemigrate status` (is the consumer running and caught up?) and run the "
            "command again, or raise --drain-timeout / --fence-seconds",
        )

    def abandon(self, flags: FlagStore, before: Flag, reason: str) -> Flag | None:
        """Lift this run's fence (if it is still there) and say what state the flag is in.

        ``before`` is the flag this run read before fencing. The flag is read back, because an
        interrupted write may or may not have landed: the fence is lifted only if it is this
        run's (the epoch right after ``before``, same side active). Signals are held back
        meanwhile. Returns the flag as left, None if it could not be read or written.
        """
        with deferred():
            try:
                now = flags.read()
                if now.epoch == before.epoch + 1 and now.fenced and now.active == before.active:
                    now = flags.write(now.unfence(), now.epoch)
                    self.out(f"{reason}: the fence was lifted")
                self.out(f"flag: {describe_flag(now, self.clock.now())}")
                return now
            except (LivemigrateError, BotoCoreError, ClientError) as exc:  # caller re-raises
                until = before.fenced_until or self.clock.now() + self.options.fence_seconds
                self.out(
                    f"{reason}: the fence could NOT be lifted ({exc}); writers wait until it "
                    f"expires by itself, at most {self.options.fence_seconds:g}s after it was "
                    f"set (by {_utc(until)}); check `livemigrate status`"
                )
                return None

    def after_flip(self, flag: Flag, command: str) -> bool:
        """Wait until the consumer applied what writers with a stale flag wrote; False: late."""
        since = flag.flipped_at + self.quiet_after()
        ok = self.wait(since, self.clock.now() + self.options.drain_timeout)
        if ok:
            old_side = "source" if flag.active == "destination" else "destination"
            self.out(f"consumer drained the writes made before the flip: the {old_side} is quiet")
        else:
            self.out(
                f"warning: the consumer had not drained within {self.options.drain_timeout}s; "
                f"keep {command} running until `livemigrate status` shows lag 0"
            )
        return ok

    def quiet_after(self) -> float:
        """Seconds after a fence or flip until every write to the old table is in its stream."""
        stream = self.options.consumer_margin
        if self.options.watermark_margin is not None:
            stream = max(stream, self.options.watermark_margin)
        if self.options.checked_writes:
            return stream
        return self.options.client_ttl + self.options.margin + stream

    def frozen_after(self, fence_at: float | None, now: float) -> float:
        """From when changes to the retired table are never replicated (rule 13): the fence
        (everything before it is drained), or without one the flip plus the writers' window."""
        return fence_at if fence_at is not None else now + self.quiet_after()

    def drained(self, since: float) -> bool:
        name = self.consumer_sk.split("#", 1)[1]
        if self.options.watermark_margin is not None:
            # Every shard read to its end by a read sent after `since` (the fence plus the
            # delivery margin): every change made before the fence is applied.
            shards = dict(self.store.query(shard_prefix(name)))
            mark = watermark_of(shards, 0.0)
            return mark is not None and mark >= since
        if not drained(self.store.get(self.consumer_sk), since, self.options.drain_lag):
            return False
        shards_held = [item for _, item in self.store.query(shard_prefix(name))]
        return shards_drained(shards_held, since, self.options.drain_lag, self.clock.now())

    def wait(self, since: float, deadline: float) -> bool:
        """Poll the consumer's heartbeat until it drained after ``since`` (False at deadline)."""
        # Ask for a report as soon as the consumer has read after `since` (it would otherwise
        # come with the next regular heartbeat); only an existing consumer item is touched.
        self.store.update(
            self.consumer_sk, {"drain_after": since}, condition="attribute_exists(#heartbeat_at)"
        )
        while True:
            if self.drained(since):
                return True
            if self.clock.now() >= deadline:
                return False
            self.clock.sleep(self.options.poll)


class LambdaDrain(Drain):
    """The drain when the consumer is a Lambda function behind an event source mapping: no
    write, no invocation, no heartbeat; a watermark written after the last possible source
    write, reported by the function once applied, proves it (``livemigrate.lambda_mode``)."""

    def __init__(
        self,
        store: ControlStore,
        watermarks: Watermarks,
        options: CutoverOptions,
        clock: Clock,
        out: Callable[[str], None],
    ) -> None:
        super().__init__(store, CONSUMER_SOURCE, options, clock, out)
        self.watermarks = watermarks

    def wait(self, since: float, deadline: float) -> bool:
        pause = since - self.clock.now()
        if pause > 0:
            self.clock.sleep(pause)
        self.out("Lambda consumer: writing watermarks into the source, waiting for their report")
        return self.watermarks.prove_drained(self.clock, deadline, self.options.poll)


class Cutover:
    """One cutover run (the CLI builds it; tests drive it directly)."""

    def __init__(
        self,
        store: ControlStore,
        flags: FlagStore,
        options: CutoverOptions,
        *,
        search: SearchSwitch | None = None,
        clock: Clock | None = None,
        out: Callable[[str], None] = print,
        watermarks: Watermarks | None = None,
        failure_queue: FailureQueue | None = None,
    ) -> None:
        self.store = store
        self.flags = flags
        self.options = options
        self.search = search
        self.watermarks = watermarks
        self.failure_queue = failure_queue
        self.clock: Clock = clock or SystemClock()
        self.out = out

    def gates(self) -> list[Gate]:
        depth = None if self.failure_queue is None else self.failure_queue.depth()
        return evaluate_gates(
            self.store, self.options.policy, self.search, self.clock.now(), failed_batches=depth
        )

    def run(self) -> CutoverResult:
        gates = self.gates()
        self.out("cutover gates:")
        for gate in gates:
            self.out(gate.line())
        failing = unmet(gates)
        if failing:
            names = ", ".join(g.name for g in failing)
            self.out(f"cutover refused: {len(failing)} gate(s) unmet: {names}")
            return CutoverResult(ExitCode.GATES_UNMET, gates)
        if self.options.dry_run:
            self.out("dry run: every gate is met; nothing was changed")
            return CutoverResult(0, gates)
        flag = self.flags.read()
        if flag.active == "destination":
            self.out(f"already cut over: {flag.table} is active (epoch {flag.epoch})")
            return CutoverResult(0, gates, flag)
        return self._switch(gates, flag)

    def _switch(self, gates: list[Gate], flag: Flag) -> CutoverResult:
        fence_at = None
        drain = self._drain()
        if self.options.policy.require_reverse:
            flag = self._arm(flag)
        before = flag
        if self.options.fenced:
            flag, fence_at = drain.fence_and_drain(self.flags, flag, "the source stream")
        try:
            now = self.clock.now()
            frozen = drain.frozen_after(fence_at, now)
            flag = self.flags.write(flag.flipped("destination", now, frozen), flag.epoch)
        except BaseException as exc:
            if fence_at is not None:
                drain.abandon(self.flags, before, reason_of(exc))
            raise
        result = CutoverResult(0, gates, flag)
        self.out(f"flag flipped: active table is now {flag.table} (epoch {flag.epoch})")
        # Only now, when the flip happened: an aborted cutover leaves dead letters as they were.
        if self.options.policy.ack_dead_letters:
            acked = DeadLetters(self.store).acknowledge_all("cutover --ack-dead-letters")
            self.out(f"acknowledged {acked} dead letter(s)")
        if fence_at is not None:
            result.write_pause = flag.flipped_at - fence_at
            self.out(f"write pause (fence to flip): {result.write_pause:.3f}s")
        if self.search is not None:
            result.search_previous = self.search.backend.swap_alias(
                self.search.alias, self.search.index
            )
            self.out(
                f"search alias {self.search.alias!r} -> {self.search.index} "
                f"(was {', '.join(result.search_previous) or 'unset'})"
            )
        if fence_at is None:
            result.drained = drain.after_flip(flag, "`livemigrate consume`")
        self._record(result)
        return result

    def _drain(self) -> Drain:
        """The heartbeat drain, or the watermark drain for a Lambda consumer."""
        consumer = self.store.get(CONSUMER_SOURCE) or {}
        if consumer.get("mode") != LAMBDA_MODE:
            return Drain(self.store, CONSUMER_SOURCE, self.options, self.clock, self.out)
        if self.watermarks is None:
            raise PreflightError(
                "the source consumer runs as a Lambda function (an event source mapping): only "
                "a watermark written into the source table can prove its drain, and this run "
                "cannot write one",
                "run `livemigrate cutover` with credentials that may PutItem/DeleteItem on the "
                "source table and read its stream (README: Deploy to AWS)",
            )
        return LambdaDrain(self.store, self.watermarks, self.options, self.clock, self.out)

    def _arm(self, flag: Flag) -> Flag:
        """Ask the consumers to mark their deletes from now on, and wait until no unmarked
        delete can still land (``replication.ARM_WAIT``): the reverse consumer tells forward
        deletes made before the flip by time, those after it by their marks. Only a migration
        with a reverse consumer needs it. Writers are not held meanwhile; the write pause starts
        with the fence."""
        now = self.clock.now()
        if not flag.marks_since:
            flag = self.flags.write(flag.armed(now), flag.epoch)
            self.out(f"consumers mark their deletes from now on; fencing in {ARM_WAIT:.1f}s")
        wait = flag.marks_since + ARM_WAIT - self.clock.now()
        if wait > 0:
            self.clock.sleep(wait)
        return flag

    def _record(self, result: CutoverResult) -> None:
        flag = result.flag
        self.store.put(
            CUTOVER,
            {
                "flipped_at": flag.flipped_at if flag else 0,
                "epoch": flag.epoch if flag else 0,
                "fenced": self.options.fenced,
                "write_pause": result.write_pause,
                "drained": result.drained,
                "search_alias": self.search.alias if self.search else None,
                "search_index": self.search.index if self.search else None,
                "search_previous": result.search_previous,
            },
        )


def evaluate_gates(
    store: ControlStore,
    policy: Policy,
    search: SearchSwitch | None,
    now: float,
    *,
    failed_batches: int | None = None,
) -> list[Gate]:
    """Every gate's verdict: the one computation that ``cutover`` and ``status`` share."""
    ready = None if search is None else search.backend.index_exists(search.index)
    snap = read_snapshot(
        store,
        now=now,
        search_index_ready=ready,
        search_index="" if search is None else search.index,
        failed_batches=failed_batches,
    )
    return check_all(snap, policy)


def policy_for(settings: Settings, store: ControlStore, **limits: Any) -> Policy:
    """The gate policy of a migration (an inverse transform requires the reverse consumer)."""
    return Policy(**limits, require_reverse=inverse_configured(settings, store) is not None)


def inverse_configured(settings: Settings, store: ControlStore) -> str | None:
    """The inverse transform of the migration (see ``migration.inverse_transform``)."""
    return inverse_transform(settings, store.get(META) or {})


def search_switch(settings: Settings, store: ControlStore) -> SearchSwitch | None:
    """The alias swap of a migration with search configured, else None."""
    if not (settings.search_url and settings.search_alias):
        return None
    from livemigrate.search.clients import open_backend
    from livemigrate.search.targets import ControlTargets

    default = f"{settings.search_alias}-{settings.migration_id}"
    index = ControlTargets(store, default).current().indices[0]
    backend = open_backend(settings)
    return SearchSwitch(backend, settings.search_alias, index)


@dataclass(frozen=True)
class Waiting:
    """``--when-gates-pass`` / ``--postpone-until-flag``: when an unattended cutover may go.

    The cutover goes once every gate passes and the postpone file (if named) is gone: the
    operator schedules it by creating the file first and removing it when the time comes.
    """

    postpone: Path | None
    every: float
    timeout: float
    clock: Clock = field(default_factory=SystemClock)

    def wait(self, cutover: Cutover) -> bool:
        """Check until the cutover may go (True) or the timeout passed (False)."""
        deadline = self.clock.now() + self.timeout if self.timeout else None
        said = ""
        while True:
            why = self.reason(cutover)
            if not why:
                return True
            if why != said:
                cutover.out(f"cutover waiting: {why} (checking every {self.every:g}s)")
                said = why
            if deadline is not None and self.clock.now() >= deadline:
                return False
            self.clock.sleep(self.every)

    def reason(self, cutover: Cutover) -> str:
        """Why the cutover must wait now ("" when it may go)."""
        failing = unmet(cutover.gates())
        if failing:
            return "gates unmet: " + ", ".join(g.name for g in failing)
        if self.postpone is not None and self.postpone.exists():
            return f"postponed while {self.postpone} exists (remove it to cut over)"
        return ""


def require_started(store: ControlStore) -> None:
    """A clear error when nothing has run for this migration (the control table is missing).

    Read-only: the control table is never created here.
    """
    if not store.exists():
        raise PreflightError(
            f"nothing has run for migration {store.migration_id!r}: the control table "
            f"{store.table!r} does not exist",
            "start the migration first: `livemigrate consume`, then `livemigrate backfill` "
            "(check the migration id and LIVEMIGRATE_CONTROL_TABLE if it did run)",
        )


def lambda_watermarks(
    settings: Settings, clients: AwsClients, store: ControlStore
) -> Watermarks | None:
    """The watermark writer when the source consumer runs as a Lambda function, else None."""
    if (store.get(CONSUMER_SOURCE) or {}).get("mode") != LAMBDA_MODE:
        return None
    from livemigrate.lambda_mode import Watermarks
    from livemigrate.tables import describe

    source = describe(clients.dynamodb, settings.source_table, "source")
    return Watermarks(clients.dynamodb, clients.streams, source, store)


def failure_queue(settings: Settings) -> FailureQueue | None:
    """The Lambda consumer's OnFailure queue (``failure_queue_url``), None if not configured."""
    if not settings.failure_queue_url:
        return None
    import boto3

    from livemigrate.lambda_mode import FailureQueue

    kwargs: dict[str, Any] = {}
    if settings.endpoint_url:
        kwargs["endpoint_url"] = settings.endpoint_url
    if settings.region:
        kwargs["region_name"] = settings.region
    return FailureQueue(boto3.client("sqs", **kwargs), settings.failure_queue_url)
