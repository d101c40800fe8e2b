"""The consumer loop: shards, leases, ordered delivery to a ``RecordSink``, checkpoints.

The engine is generic: it reads ONE stream for a named consumer ("source" applies S's stream to
D; "search" applies D's stream to Elasticsearch; a later "reverse" may too) and hands each
shard's records, in order, to a ``livemigrate.records.RecordSink``. Only the engine checkpoints,
and only after ``apply`` returned (or raised ``ApplyFailure(index, ...)``, which means records
before ``index`` are durable). A record that keeps failing goes to the dead-letter store after
``Tuning.max_attempts`` (at once when ``retryable`` is False) and only then is the checkpoint
moved past it.

Entry point for other engines
-----------------------------
::

    from stream_consumer.engine import ConsumerOptions, Tuning, run_consumer
    from stream_consumer.source import BotoShardSource

    options = ConsumerOptions(
        store=store,              # livemigrate.control.ControlStore of the migration
        name="search",            # consumer name: SHARD#search#<shard>, CONSUMER#search
        worker_id="host-1234",    # unique per process
        lease_seconds=30.0,
        clock=SystemClock(),
        dead_letters=DeadLetters(store),
        origin="search",          # dead-letter origin
        tuning=Tuning(batch_size=500, poll_interval=0.5),
    )
    caught_up = run_consumer(
        BotoShardSource(clients.streams, stream_arn),  # or any ShardSource
        sink,                     # RecordSink: apply(records) / ApplyFailure
        options,
        until_caught_up=False,    # True: return once every shard is read to its current end
        stop_event=stop,          # threading.Event: set it to stop; leases are released
    )

It returns True when it stopped because it caught up, False when ``stop_event`` was set. A sink
may also provide ``on_idle()``; the engine calls it at each heartbeat (the destination applier
uses it to switch to real deletes on time even when no records arrive).

Fences (ARCHITECTURE.md rule 11): each held shard has a ``livemigrate.fencing.Fence``, its
lease length minus ``Tuning.lease_margin`` counted from before the claim or renewal was sent.
A batch is applied on an apply thread inside ``fencing.guarded(fence)`` (the destination
applier carries the fence into its own write threads) while the shard thread renews the lease
every third of it; a write attempt after the deadline raises ``LeaseExpired`` before it is
sent, and a lost lease revokes the fence at once. Either way the shard is dropped without a
checkpoint or a dead letter; whoever holds it next replays from the checkpoint.

Outages: a transient failure (``livemigrate.outage.is_transient``: connection refused or
closed, timeouts, 5xx, throttling; or an ``ApplyFailure`` marked ``transient`` by a sink whose
service is down) ends the round; the loop backs off (capped, jittered), marks itself degraded
(log, the ``degraded`` gauge, ``degraded_since`` on ``CONSUMER#<name>`` once the control table
takes it, cleared on recovery) and carries on. It never dead-letters for an outage, and a
checkpoint that fails after an apply is retried, never skipped. An outage longer than
``Tuning.outage_seconds`` raises ``ServiceUnreachable`` (positions are saved).

Caught up means: every shard of the latest DescribeStream is finished (closed and read to its
end, or trimmed) or is held by this process and its last GetRecords returned no records. A shard
held by another live process keeps ``until_caught_up`` waiting until that lease is released or
expires (then this process takes it over).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from botocore.exceptions import BotoCoreError, ClientError

from livemigrate import fencing, keys
from livemigrate.backoff import Backoff
from livemigrate.clock import Clock
from livemigrate.control import ControlStore
from livemigrate.counters import ConsumerMetric
from livemigrate.deadletters import DeadLetters, Origin
from livemigrate.errors import LeaseLost
from livemigrate.fencing import Fence, LeaseExpired, WindowClosed
from livemigrate.outage import Outage, is_transient
from livemigrate.records import ApplyFailure, RecordSink, StreamRecord
from livemigrate.retention import DYNAMODB_STREAMS_RETENTION, Retention, lag_message
from stream_consumer.leases import BalancePolicy, ShardLeases
from stream_consumer.lineage import resolve
from stream_consumer.metrics import Metrics
from stream_consumer.source import (
    DataTrimmed,
    IteratorExpired,
    ShardGone,
    ShardInfo,
    ShardSource,
    Throttled,
    parser_of,
)

if TYPE_CHECKING:
    from livemigrate.migration import Migration

log = logging.getLogger("livemigrate.consumer")

HOUR = 3600.0


@dataclass(frozen=True)
class Tuning:
    """Knobs of the loop (defaults suit DynamoDB Streams)."""

    batch_size: int = 1000  # GetRecords Limit (the service maximum)
    poll_interval: float = 0.5  # sleep when no held shard returned records
    discover_interval: float = 10.0  # DescribeStream cadence (new child shards)
    heartbeat_interval: float = 5.0  # CONSUMER# heartbeat, lag, retention guard
    drain_check_interval: float = 0.5  # how often a cutover's drain request is looked for
    max_attempts: int = 5  # apply attempts of one record before it is dead-lettered
    backoff_base: float = 0.1
    backoff_cap: float = 5.0
    shard_threads: int = 4  # held shards read in parallel
    # The source's retention and the lag thresholds derived from it (rule 9).
    retention: Retention = DYNAMODB_STREAMS_RETENTION
    # A lease holder stops writing this long before its lease expires (default: a third of
    # the lease): covers clock skew between machines and a write already sent (rule 11).
    lease_margin: float | None = None
    # While a batch is applied, how often (real seconds) the shard thread looks whether the
    # lease is due for renewal (it renews every third of the lease): keep it well under that.
    apply_check_interval: float = 0.5
    # An endpoint failing (connection refused or closed, timeouts, 5xx, throttling) for longer
    # than this ends the process with ServiceUnreachable; shorter outages are ridden out.
    outage_seconds: float = 300.0

    def backoff(self, attempt: int) -> float:
        """Capped exponential backoff with jitter (attempt counts from 1)."""
        return Backoff(self.backoff_base, self.backoff_cap).delay(attempt)


def transient(exc: BaseException) -> bool:
    """An outage (of the endpoint, or of the sink's service), not a bad record."""
    if isinstance(exc, ApplyFailure):
        return exc.transient
    return is_transient(exc)


def retention_level(lag_seconds: float, tuning: Tuning) -> str:
    """ "ok", "warn" or "error" for a lag against the stream's retention (rule 9)."""
    return tuning.retention.level(lag_seconds)


@runtime_checkable
class IdleAware(Protocol):
    def on_idle(self) -> None: ...


class PageSize:
    """The GetRecords limit of each shard, fitted to the lease.

    A read slower than a quarter of the lease shrinks the shard's limit so that the next one
    takes about an eighth; a read faster than a sixteenth doubles it, up to the tuning's batch
    size. Without it a source slower than the lease (moto returns 1,000 records in ~5 s on a
    loaded machine) let the lease expire during every read: the batch was refused at the
    fence, the shard taken again from the same checkpoint, and the consumer never advanced.
    The limits outlive a lost lease (a new reader of the shard starts from its fitted limit).
    """

    def __init__(self, most: int, lease_seconds: float) -> None:
        self.most = most
        self.slow = lease_seconds / 4
        self.fast = lease_seconds / 16
        self.target = lease_seconds / 8
        self._limits: dict[str, int] = {}

    def of(self, shard_id: str) -> int:
        return self._limits.get(shard_id, self.most)

    def observe(self, shard_id: str, limit: int, seconds: float) -> None:
        """A read of ``limit`` records from ``shard_id`` took ``seconds``."""
        if seconds > self.slow and limit > 1:
            fitted = max(1, min(limit // 2, int(limit * self.target / seconds)))
            log.info(
                "shard %s: a read of at most %d records took %.2fs (lease %gs): reading %d "
                "at a time",
                shard_id,
                limit,
                seconds,
                self.target * 8,
                fitted,
            )
            self._limits[shard_id] = fitted
        elif seconds < self.fast and limit < self.most:
            self._limits[shard_id] = min(self.most, limit * 2)


@dataclass
class _Reader:
    """What this process knows about one shard it holds."""

    shard_id: str
    checkpoint: str | None
    records_applied: int
    iterator: str | None = None
    from_horizon: bool = False  # the checkpoint was trimmed: restart at the trim horizon
    caught_up: bool = False
    finished: bool = False
    lost: bool = False
    lag: float = 0.0
    behind: int = 0
    read_at: float = 0.0  # when the latest GetRecords of this shard was sent
    # When the latest GetRecords that found the shard at its end was sent (every record that
    # arrived before it is applied): the shard's part of the watermark (rule 15).
    caught_up_at: float | None = None
    backoff: int = 0
    limit: int = 0  # the GetRecords limit of the latest read (PageSize)
    last_renew: float = 0.0
    # The local deadline of our lease: writes of this shard's batches stop once it passes.
    fence: Fence | None = field(default=None, repr=False)


def _watermark_report(reader: _Reader) -> dict[str, Any]:
    """``caught_up_at`` for the shard item, once known (``stream_consumer.watermark``)."""
    return {} if reader.caught_up_at is None else {"caught_up_at": reader.caught_up_at}


class _Dropped(Exception):
    """The lease went to another worker while we worked on the shard."""


def json_safe_record(record: StreamRecord) -> dict[str, Any]:
    """The raw record for a dead letter (datetimes as epoch seconds)."""
    raw = dict(record.raw)
    body = dict(raw.get("dynamodb", {}))
    created = body.get("ApproximateCreationDateTime")
    if isinstance(created, datetime):
        body["ApproximateCreationDateTime"] = created.timestamp()
    raw["dynamodb"] = body
    raw.setdefault("shard_id", record.shard_id)
    return raw


@dataclass(frozen=True)
class ConsumerOptions:
    """Who a consumer process is and how it runs: everything but its stream, sink and metrics.

    Parameters
    ----------
    store:
        The migration's control store (leases, checkpoints, CONSUMER# item).
    name:
        Consumer name ("source", "search", "reverse").
    worker_id:
        Unique per process; the lease owner.
    lease_seconds:
        A lease not renewed for this long is taken over by another worker.
    clock:
        Time for leases, backoff and lag (FakeClock in tests).
    dead_letters, origin:
        Where records that cannot be applied go, and under which origin.
    tuning:
        Batch size, poll interval and the rest.
    """

    store: ControlStore
    name: str
    worker_id: str
    lease_seconds: float
    clock: Clock
    dead_letters: DeadLetters
    origin: Origin
    tuning: Tuning = field(default_factory=Tuning)

    @classmethod
    def for_source(
        cls,
        migration: Migration,
        worker_id: str,
        *,
        lease_seconds: float,
        clock: Clock,
        tuning: Tuning,
    ) -> ConsumerOptions:
        """The options of ``migration``'s source consumer ("source", dead letters of origin
        "stream"), as benchmarks and tests run it."""
        return cls(
            store=migration.store,
            name="source",
            worker_id=worker_id,
            lease_seconds=lease_seconds,
            clock=clock,
            dead_letters=migration.dead_letters,
            origin="stream",
            tuning=tuning,
        )


class Consumer:
    """One consumer process of one stream (see the module docstring).

    Parameters
    ----------
    source:
        Shards and records (``BotoShardSource`` or the scripted stream).
    sink:
        Where records go, in order per shard.
    options:
        The consumer's name, control store, lease, clock, dead letters and tuning.
    metrics:
        Counters and gauges (a fresh ``Metrics(options.name)`` if omitted).
    """

    def __init__(
        self,
        source: ShardSource,
        sink: RecordSink,
        options: ConsumerOptions,
        metrics: Metrics | None = None,
    ) -> None:
        store, name, clock = options.store, options.name, options.clock
        self.source = source
        self.store = store
        self.name = name
        self.sink = sink
        self.me = options.worker_id
        self.ttl = options.lease_seconds
        self.clock = clock
        self.dead_letters = options.dead_letters
        self.origin = options.origin
        self.tuning = options.tuning
        self.metrics = metrics or Metrics(name)
        self.leases = ShardLeases(store, name, source.stream_arn)
        self._parse = parser_of(source)
        self.policy = BalancePolicy()
        self.readers: dict[str, _Reader] = {}
        self.listed: list[ShardInfo] = []
        self.states: dict[str, dict[str, Any]] = {}
        self._due = {
            "discover": float("-inf"),
            "balance": float("-inf"),
            "beat": float("-inf"),
            "drain": float("-inf"),
        }
        self._drain_answered = 0.0
        self._pool = ThreadPoolExecutor(self.tuning.shard_threads, thread_name_prefix="shard")
        # Batches are applied on their own threads so the shard thread can renew the lease
        # while a long apply runs (retries, throttling), as the KCL renews on its own thread.
        self._appliers = ThreadPoolExecutor(self.tuning.shard_threads, thread_name_prefix="apply")
        self._stop = threading.Event()
        self.margin = (
            self.tuning.lease_margin if self.tuning.lease_margin is not None else self.ttl / 3
        )
        self.outage = Outage(f"consumer {name}: service", clock, self.tuning.outage_seconds)
        self._degraded_recorded = False
        self.page_size = PageSize(self.tuning.batch_size, self.ttl)

    @property
    def consumer_sk(self) -> str:
        return keys.consumer(self.name)

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Record the consumer (and its start position) before anything is read (rule 5)."""
        now = self.clock.now()
        arn = self.source.stream_arn
        fresh = {
            "stream_arn": arn,
            "start_position": "TRIM_HORIZON",
            "started_at": now,
            "heartbeat_at": now,
            "lag_seconds": 0,
            "records_behind": 0,
        }
        if self.store.put(self.consumer_sk, fresh, only_if_absent=True):
            log.info("consumer %s starts at TRIM_HORIZON of %s", self.name, arn)
            return
        held = self.store.get(self.consumer_sk) or {}
        resumed: dict[str, Any] = {"heartbeat_at": now, "resumed_at": now, "stream_arn": arn}
        if held.get("stream_arn") not in (None, arn):
            log.error(
                "consumer %s was reading stream %s and now finds %s: the stream was re-created;"
                " changes made between the two streams were never delivered (POSSIBLE DATA "
                "LOSS) - verify before cutover",
                self.name,
                held.get("stream_arn"),
                arn,
            )
            # Kept for the cutover gate: only a verification after this moment clears it.
            resumed.update(stream_changed_at=now, previous_stream_arn=held.get("stream_arn"))
        self.store.update(self.consumer_sk, resumed)
        log.info("consumer %s resumes from its recorded checkpoints", self.name)

    def run(self, until_caught_up: bool = False, stop_event: threading.Event | None = None) -> bool:
        """Consume until stopped (False) or, with ``until_caught_up``, until caught up (True).

        A transient endpoint failure (``livemigrate.outage.is_transient``) anywhere in a round
        is ridden out: back off, report degraded, carry on; ``ServiceUnreachable`` once the
        outage lasts longer than ``Tuning.outage_seconds`` (checkpoints are already written).
        """
        self._stop = stop_event or threading.Event()
        while not self._stop.is_set() and not self._attempt(self.start):
            continue
        try:
            while not self._stop.is_set():
                progressed = self._attempt(self.step)
                if until_caught_up and progressed is not None and self._done():
                    return True
                if not progressed:
                    self._sleep(self.tuning.poll_interval)
            return False
        finally:
            self.shutdown()

    def _done(self) -> bool:
        return bool(self.caught_up() and self._attempt(self._confirm_caught_up))

    def _attempt(self, work: Callable[[], Any]) -> Any:
        """``work()``; None after a transient failure (backed off: the caller goes round)."""
        try:
            result = work()
        except (ClientError, BotoCoreError, ApplyFailure) as exc:
            if not transient(exc):
                raise
            self._degrade(exc)
            return None
        self._recover()
        return True if result is None else result

    def _degrade(self, exc: BaseException) -> None:
        """One more transient failure: back off (ServiceUnreachable past the limit)."""
        delay = self.outage.failed(exc)
        self.metrics.set("degraded", 1)
        self.metrics.inc("outage_retries_total")
        log.warning(
            "consumer %s degraded for %.1fs (%s: %s); retrying in %.2fs",
            self.name,
            self.outage.seconds(),
            type(exc).__name__,
            exc,
            delay,
        )
        self._report_degraded()
        self._sleep(delay)

    def _report_degraded(self) -> None:
        """``degraded_since`` on CONSUMER#<name> as soon as the control table takes it."""
        if self._degraded_recorded:
            return
        since = self.clock.now() - self.outage.seconds()
        try:
            self.store.update(self.consumer_sk, {"degraded_since": since})
        except (ClientError, BotoCoreError) as exc:
            if not is_transient(exc):
                raise
            return
        self._degraded_recorded = True

    def _recover(self) -> None:
        if not self.outage.degraded and not self._degraded_recorded:
            return
        self.outage.recovered()
        self.metrics.set("degraded", 0)
        if self._degraded_recorded:
            try:
                self.store.update(self.consumer_sk, remove=("degraded_since",))
            except (ClientError, BotoCoreError) as exc:
                if not is_transient(exc):
                    raise
                return  # cleared at the next good round
            self._degraded_recorded = False

    def step(self) -> bool:
        """One round: discover/balance when due, one batch per held shard, renew, heartbeat."""
        now = self.clock.now()
        if now >= self._due["discover"]:
            self.discover()
        if now >= self._due["balance"] or not self.readers:
            self.balance()
        asked = self._drain_requested(now)
        try:
            return self._poll_all()
        finally:
            # Even when a shard met an outage (the sink's service, say): keep the other leases
            # and report, so the consumer is seen alive (and degraded) meanwhile.
            self._renew_idle()
            if asked or self.clock.now() >= self._due["beat"]:
                self.heartbeat()

    def _drain_requested(self, now: float) -> bool:
        """A cutover or rollback waits for a report from reads sent after ``drain_after``:
        answer it at the end of this round (whose reads are all sent after ``now``) instead of
        at the next regular heartbeat, which shortens the fenced write pause."""
        if now < self._due["drain"]:
            return False
        self._due["drain"] = now + self.tuning.drain_check_interval
        after = float((self.store.get(self.consumer_sk) or {}).get("drain_after") or 0)
        if after <= self._drain_answered or now < after:
            return False
        self._drain_answered = after
        return True

    def shutdown(self) -> None:
        """Release every lease (checkpoints are already written after each apply).

        An endpoint that does not answer leaves the leases to expire (others take over then).
        """
        for reader in list(self.readers.values()):
            if reader.fence is not None:
                reader.fence.revoke()
            try:
                if self.leases.release(reader.shard_id, self.me, _watermark_report(reader)):
                    log.info("released %s", reader.shard_id)
            except (ClientError, BotoCoreError) as exc:
                if not is_transient(exc):
                    raise
                log.warning("could not release %s (%s); it expires instead", reader.shard_id, exc)
        self.readers.clear()
        self.metrics.set("shards_held", 0)
        self._pool.shutdown(wait=True)
        # An apply abandoned after its lease was lost is fenced; do not wait for it.
        self._appliers.shutdown(wait=False)

    # -- shards and leases --------------------------------------------------------------------
    def discover(self) -> None:
        self.listed = self.source.list_shards()
        self.leases.register(self.listed, self.states or self.leases.states())
        self._due["discover"] = self.clock.now() + self.tuning.discover_interval
        self._due["balance"] = float("-inf")

    def balance(self) -> None:
        """Refresh shard states, settle trimmed parents, claim our fair share of free shards."""
        self.states = self.leases.states()
        lineage = resolve(self.listed, self.states)
        for parent in sorted(lineage.lost_parents):
            log.error(
                "shard %s of consumer %s was trimmed (past the stream's retention) before it was "
                "read to its end: its remaining records are LOST; verify and repair before "
                "cutover",
                parent,
                self.name,
            )
            self.metrics.inc("trimmed_total", shard=parent)
            self._record_loss(parent)
            self.leases.mark_trimmed(parent)
            self.states[parent]["finished"] = True
        if lineage.lost_parents:
            lineage = resolve(self.listed, self.states)
        now = self.clock.now()
        wanted = self.policy.choose(lineage.readable - set(self.readers), self.states, self.me, now)
        for shard_id in wanted:
            sent = self.clock.monotonic()  # the fence counts from before the claim was sent
            item = self.leases.claim(shard_id, self.me, self.ttl, now)
            if item is None:
                continue
            checkpoint = item.get("checkpoint")
            self.readers[shard_id] = _Reader(
                shard_id,
                str(checkpoint) if checkpoint else None,
                int(item.get("records_applied", 0)),
                last_renew=now,
                fence=Fence.for_lease(
                    self.clock, sent, self.ttl, self.margin, f"lease {self.leases.sk(shard_id)}"
                ),
            )
            self.metrics.inc("leases_taken_total", shard=shard_id)
            log.info("took lease %s (checkpoint %s)", shard_id, checkpoint)
        self.metrics.set("shards_held", len(self.readers))
        self._due["balance"] = now + max(self.ttl / 3, self.tuning.poll_interval)

    def caught_up(self) -> bool:
        """Every listed shard finished, or held here and read to its current end."""
        for shard in self.listed:
            state = self.states.get(shard.shard_id, {})
            if state.get("finished"):
                continue
            reader = self.readers.get(shard.shard_id)
            if reader is None or not reader.caught_up:
                return False
        return True

    def _confirm_caught_up(self) -> bool:
        # New child shards or freed leases would show up here; read once more to be sure.
        self.discover()
        self.balance()
        return self.caught_up()

    # -- reading ------------------------------------------------------------------------------
    def _poll_all(self) -> bool:
        """One batch per held shard (in parallel); a transient failure is raised after every
        shard's poll has ended, so no poll of this round still runs in the next."""
        readers = list(self.readers.values())
        if len(readers) <= 1:
            try:
                return any([self._poll(r) for r in readers])
            finally:
                self._forget_done(readers)
        futures = [self._pool.submit(self._poll, r) for r in readers]
        wait(futures)
        self._forget_done(readers)
        return any([f.result() for f in futures])

    def _forget_done(self, readers: list[_Reader]) -> None:
        for reader in readers:
            if reader.finished or reader.lost:
                self.readers.pop(reader.shard_id, None)
                self.metrics.forget(reader.shard_id)

    def _poll(self, reader: _Reader) -> bool:
        """Read and deliver one batch of one shard; True if records came."""
        try:
            return self._read_batch(reader)
        except LeaseExpired as exc:
            # Our local deadline passed mid-batch: the write was refused before it was sent.
            # Nothing is checkpointed; whoever holds the shard next replays from the checkpoint.
            log.warning(
                "shard %s: stopped writing at the lease deadline (%s)", reader.shard_id, exc
            )
            self._drop(reader, "leases_expired_total")
            return False
        except (_Dropped, LeaseLost):
            if not reader.lost:  # a renewal while applying may have dropped it already
                log.warning("lease %s was taken over by another worker", reader.shard_id)
                self._drop(reader, "leases_lost_total")
            return False

    def _drop(self, reader: _Reader, metric: ConsumerMetric) -> None:
        if reader.fence is not None:
            reader.fence.revoke()
        reader.lost = True
        self.metrics.inc(metric, shard=reader.shard_id)

    def _read_batch(self, reader: _Reader) -> bool:
        page = self._get_page(reader)
        if page is None:
            return False
        records = [self._parse(raw, reader.shard_id) for raw in page.records]
        if reader.checkpoint is not None:
            records = [r for r in records if r.at > reader.checkpoint]
        self.metrics.inc("records_read_total", len(page.records), shard=reader.shard_id)
        try:
            delivered = not records or self._deliver(reader, records)
        except (ClientError, BotoCoreError, ApplyFailure):
            reader.iterator = None  # an outage mid-batch: reopen from the checkpoint
            raise
        if not delivered:
            reader.iterator = None  # stopped mid-batch: reopen from the checkpoint
            return True
        reader.iterator = page.next_iterator
        reader.caught_up = not page.records
        if reader.caught_up:
            reader.caught_up_at = reader.read_at
        reader.behind = len(page.records) if len(page.records) >= reader.limit else 0
        if reader.caught_up:
            reader.lag = 0.0
        self.metrics.set("lag_seconds", reader.lag, shard=reader.shard_id)
        if page.next_iterator is None:
            self._finish(reader)
        return bool(page.records)

    def _get_page(self, reader: _Reader) -> Any:
        try:
            if reader.iterator is None:
                after = None if reader.from_horizon else reader.checkpoint
                reader.iterator = self.source.iterator(reader.shard_id, after)
            sent, began = self.clock.now(), self.clock.monotonic()
            reader.limit = self.page_size.of(reader.shard_id)
            page = self.source.get_records(reader.iterator, reader.limit)
            self.page_size.observe(reader.shard_id, reader.limit, self.clock.monotonic() - began)
            reader.read_at = sent
        except IteratorExpired:
            self.metrics.inc("iterators_expired_total", shard=reader.shard_id)
            log.info("iterator of %s expired; reopening at the checkpoint", reader.shard_id)
            reader.iterator = None
            return None
        except DataTrimmed:
            self._trimmed(reader)
            return None
        except Throttled:
            self._back_off(reader, "throttled_total", "throttled")
            return None
        except (ClientError, BotoCoreError) as exc:
            if is_transient(exc):
                # The endpoint is failing: the loop rides the outage out (degraded, backoff).
                self.metrics.inc("read_errors_total", shard=reader.shard_id)
                raise
            self._back_off(reader, "read_errors_total", f"failed ({type(exc).__name__}: {exc})")
            return None
        except ShardGone:
            log.error("shard %s is gone (stream disabled or trimmed)", reader.shard_id)
            self._trimmed(reader)
            self._finish(reader)
            return None
        reader.backoff = 0
        return page

    def _back_off(self, reader: _Reader, metric: ConsumerMetric, what: str) -> None:
        reader.backoff += 1
        self.metrics.inc(metric, shard=reader.shard_id)
        delay = self.tuning.backoff(reader.backoff)
        log.warning("reading %s %s; backing off %.2fs", reader.shard_id, what, delay)
        self._sleep(delay)

    def _record_loss(self, shard_id: str) -> None:
        """Keep the loss on CONSUMER#<name>: rollback and status read it, long after the log."""
        self.store.update(
            self.consumer_sk, {"records_lost_at": self.clock.now(), "records_lost_shard": shard_id}
        )

    def _trimmed(self, reader: _Reader) -> None:
        self.metrics.inc("trimmed_total", shard=reader.shard_id)
        self._record_loss(reader.shard_id)
        log.error(
            "shard %s: checkpoint %s is past the stream retention; restarting at the trim "
            "horizon - records in between are LOST; verify and repair before cutover",
            reader.shard_id,
            reader.checkpoint,
        )
        reader.from_horizon = True
        reader.iterator = None

    # -- delivery and checkpoints -------------------------------------------------------------
    def _deliver(self, reader: _Reader, records: Sequence[StreamRecord]) -> bool:
        """Apply records in order; checkpoint after each durable prefix. False if stopped."""
        pending = list(records)
        attempts = 0
        while pending:
            try:
                self._apply(reader, pending)
            except WindowClosed as exc:
                # A tombstone or unmarked-delete decision got too old to be safe: decide again.
                self.metrics.inc("tombstone_retries_total", shard=reader.shard_id)
                log.info("shard %s: %s; applying the batch again", reader.shard_id, exc)
                continue
            except ApplyFailure as failure:
                if failure.transient:
                    raise  # the sink's service is down: ridden out by the loop, no dead letter
                pending, attempts = self._after_failure(reader, pending, failure, attempts)
                if attempts and self._stop.is_set():
                    return False
                continue
            except (ClientError, BotoCoreError) as exc:
                if is_transient(exc):
                    raise  # an outage, not a bad record: the loop rides it out, no dead letter
                unclassified = ApplyFailure(0, f"{type(exc).__name__}: {exc}", retryable=True)
                pending, attempts = self._after_failure(reader, pending, unclassified, attempts)
                if attempts and self._stop.is_set():
                    return False
                continue
            self._checkpoint_applied(reader, pending[-1], len(pending))
            return True
        return True

    def _apply(self, reader: _Reader, records: Sequence[StreamRecord]) -> None:
        """``sink.apply`` on an apply thread, under the shard's fence, renewing the lease
        while it runs (rule 11). LeaseLost / LeaseExpired end it: the fence is revoked, so the
        batch's remaining writes are refused, and the shard is dropped."""
        fence = reader.fence

        def guarded_apply() -> None:
            with fencing.guarded(fence):
                self.sink.apply(records)

        future: Future[None] = self._appliers.submit(guarded_apply)
        while True:
            try:
                return future.result(timeout=self.tuning.apply_check_interval)
            except FutureTimeout:
                self._renew_while_applying(reader)

    def _renew_while_applying(self, reader: _Reader) -> None:
        now = self.clock.now()
        if now - reader.last_renew < self.ttl / 3:
            return
        try:
            self._renew(reader, now, {"lag_seconds": reader.lag})
        except (ClientError, BotoCoreError) as exc:
            if not is_transient(exc):
                raise
            # Cannot renew now: keep trying; the fence stops our writes if it never succeeds.
            log.warning("shard %s: lease renewal failed (%s); retrying", reader.shard_id, exc)
            return
        if reader.lost:
            raise _Dropped(reader.shard_id)

    def _checkpoint_applied(self, reader: _Reader, last: StreamRecord, applied: int) -> None:
        """The checkpoint after a successful apply: retried through an outage, never skipped
        (the apply is idempotent under the version rule, so a replay would be harmless too)."""
        while True:
            try:
                self._checkpoint(reader, last, applied)
                return
            except (ClientError, BotoCoreError) as exc:
                if not is_transient(exc):
                    raise
                self._degrade(exc)

    def _after_failure(
        self, reader: _Reader, pending: list[StreamRecord], failure: ApplyFailure, attempts: int
    ) -> tuple[list[StreamRecord], int]:
        if failure.index > 0:
            self._checkpoint(reader, pending[failure.index - 1], failure.index)
            pending = pending[failure.index :]
            attempts = 0
        attempts += 1
        if not failure.retryable or attempts >= self.tuning.max_attempts:
            self._dead_letter(reader, pending[0], failure.reason, attempts)
            return pending[1:], 0
        self.metrics.inc("apply_retries_total", shard=reader.shard_id)
        delay = self.tuning.backoff(attempts)
        log.warning(
            "apply of %s in %s failed (attempt %d): %s; retrying in %.2fs",
            pending[0].sequence_number,
            reader.shard_id,
            attempts,
            failure.reason,
            delay,
        )
        self._sleep(delay)
        return pending, attempts

    def _dead_letter(self, reader: _Reader, record: StreamRecord, reason: str, tries: int) -> None:
        self.dead_letters.add(
            self.origin,
            f"{reason} (after {tries} attempt(s), shard {reader.shard_id})",
            json_safe_record(record),
            record.keys,
        )
        self.metrics.inc("records_dead_lettered_total", shard=reader.shard_id)
        log.error("record %s dead-lettered: %s", record.sequence_number, reason)
        # Only now may the checkpoint pass it (retried through an outage: no second letter).
        self._checkpoint_applied(reader, record, 0)

    def _checkpoint(self, reader: _Reader, last: StreamRecord, applied: int) -> None:
        now = self.clock.now()
        lag = max(0.0, now - last.approximate_creation)
        sent = self.clock.monotonic()
        self.leases.checkpoint(
            reader.shard_id,
            self.me,
            self.ttl,
            now,
            {
                "checkpoint": last.at,
                "records_applied": reader.records_applied + applied,
                "last_applied_at": now,
                "lag_seconds": lag,
            },
        )
        self._extend(reader, sent)
        reader.records_applied += applied
        reader.lag = lag
        reader.checkpoint = last.at
        reader.last_renew = now
        self.metrics.inc("records_applied_total", applied, shard=reader.shard_id)

    def _extend(self, reader: _Reader, sent: float) -> None:
        if reader.fence is not None:
            reader.fence.extend(sent, self.ttl, self.margin)

    def _finish(self, reader: _Reader) -> None:
        """A closed shard read to its end: finished, lease released; its children may start."""
        if not self.leases.release(reader.shard_id, self.me, {"finished": True}):
            raise _Dropped(reader.shard_id)
        if reader.fence is not None:
            reader.fence.revoke()
        reader.finished = True
        self.states.setdefault(reader.shard_id, {})["finished"] = True
        self.metrics.inc("shards_finished_total", shard=reader.shard_id)
        self._due["balance"] = float("-inf")
        log.info("shard %s finished (%d records)", reader.shard_id, reader.records_applied)

    def _renew_idle(self) -> None:
        now = self.clock.now()
        for reader in list(self.readers.values()):
            if now - reader.last_renew >= self.ttl / 3:
                self._renew(reader, now, {"lag_seconds": reader.lag})

    def _renew(self, reader: _Reader, now: float, progress: dict[str, Any]) -> None:
        """Renew a held lease with ``progress``; a lease another worker took is let go."""
        sent = self.clock.monotonic()
        try:
            self.leases.checkpoint(reader.shard_id, self.me, self.ttl, now, progress)
        except LeaseLost:
            log.warning("lease %s was taken over by another worker", reader.shard_id)
            self._drop(reader, "leases_lost_total")
            self.readers.pop(reader.shard_id, None)
            return
        self._extend(reader, sent)
        reader.last_renew = now

    def heartbeat(self) -> None:
        """Lag and backlog on CONSUMER#<name>; the retention guard; the sink's idle hook."""
        now = self.clock.now()
        lag = max((r.lag for r in self.readers.values()), default=0.0)
        behind = sum(r.behind for r in self.readers.values())
        # What this heartbeat reports was read no earlier than read_from: a cutover waits for a
        # read_from after the last write to the old table (an apply may outlast its margin).
        read_from = min((r.read_at for r in self.readers.values()), default=now)
        with self.store.unsent_costs() as costs:  # request units ride along (accounting)
            self.store.update(
                self.consumer_sk,
                {
                    "heartbeat_at": now,
                    "read_from": read_from,
                    "lag_seconds": lag,
                    "records_behind": behind,
                },
                add=costs,
            )
        self.metrics.set("records_behind", behind)
        message = lag_message(f"consumer {self.name}", lag, self.tuning.retention)
        if message is not None:
            log_level = (
                logging.ERROR if retention_level(lag, self.tuning) == "error" else logging.WARNING
            )
            log.log(log_level, "%s", message)
        self._report_shards(now)
        if isinstance(self.sink, IdleAware):
            self.sink.on_idle()
        self._due["beat"] = now + self.tuning.heartbeat_interval

    def _report_shards(self, now: float) -> None:
        """The same report per held shard (with the lease renewal): several processes share
        one CONSUMER item, so a cutover's drain check reads every shard's own report."""
        for reader in list(self.readers.values()):
            report = {
                "read_from": reader.read_at,
                "behind": reader.behind,
                "lag_seconds": reader.lag,
                **_watermark_report(reader),
            }
            self._renew(reader, now, report)

    def _sleep(self, seconds: float) -> None:
        end = self.clock.now() + seconds
        while not self._stop.is_set():
            left = end - self.clock.now()
            if left <= 0:
                return
            self.clock.sleep(min(0.05, left))


def run_consumer(
    source: ShardSource,
    sink: RecordSink,
    options: ConsumerOptions,
    *,
    metrics: Metrics | None = None,
    until_caught_up: bool = False,
    stop_event: threading.Event | None = None,
) -> bool:
    """Run one consumer process until stopped or caught up (see the module docstring)."""
    consumer = Consumer(source, sink, options, metrics)
    return consumer.run(until_caught_up=until_caught_up, stop_event=stop_event)
