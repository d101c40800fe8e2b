"""The search sink: applies the destination table's stream to Elasticsearch, ordered and lossless.

Why the version rule is enforced with ``_mget`` + optimistic concurrency, not ES versions
-----------------------------------------------------------------------------------------
Every document carries the padded stream sequence number that produced it (``_lm_seq``, a
keyword) and an event is applied only when its sequence number is greater than the one held
(string comparison of the 40-digit padded form: ``livemigrate.versioning.is_newer``).

- Elasticsearch's ``version_type=external`` holds a long (at most 2^63-1, 19 digits). DynamoDB
  stream sequence numbers are 21-40 digits (AWS documents a length of 21 to 40; moto and real
  streams show 21+ digits), so ``int(seq)`` does not fit, and no order-preserving map of 40-digit
  numbers into 63 bits exists. Deriving a version from the arrival time or a counter would not
  survive replays from another process.
- A scripted upsert ("overwrite only if newer", in painless) would be one round trip, but the
  node this project runs (the integ-test-zip distribution, modules apm, transport-netty4,
  x-pack-core, x-pack-security) has no ``lang-painless``: every script fails with
  ``script_lang not supported [painless]``. Managed clusters have it; we cannot rely on it.
- So each bulk batch first reads what the index holds for its ids with one real-time
  ``_mget`` (``_lm_seq`` + ``_seq_no``/``_primary_term``), drops events that are not newer, and
  writes the rest conditionally: ``create`` when the id was absent, ``index``/``delete`` with
  ``if_seq_no``+``if_primary_term`` when it was present. A 409 means another writer (the resync
  scan, a second sink) changed the document in between: those ids are re-read and decided
  again. This is the DynamoDB destination's conditional write, done with ES's own primitive,
  and it holds for any sequence-number length and any number of concurrent writers.

Order within a call: records are cut into bounded batches (count and bytes) in stream order;
inside a batch only the last record per document id counts (it is the newest), and batches are
applied one after another, so per-document order holds. Replays are harmless: a replayed event
is not newer than what it already wrote. A delete of an absent document is a no-op.

Throughput (bench/bench_search.py, issue 13): the version read is skipped where it would
almost always find nothing. An ``INSERT`` record means the item did not exist in D just before,
so its document is written with a blind ``create`` (put-if-absent, no ``_mget``): a 409 (the
document exists after all: a replay, a resync scan, a tombstone) sends only those ids through
the read-and-decide path, so the version rule holds exactly as before. A backfill, whose
writes reach D's stream as ``INSERT`` records, then costs one ``_bulk`` per batch, like a
plain ``helpers.bulk``. For other records, while one batch is written, the next batch's
documents are built and (when the two batches share no id) its versions are read, in helper
threads. Client CPU per document is the rest of the cost (the baseline gets its documents
ready-made): numbers that are short integers skip ``Decimal``, one JSON encoder serves every
document, action lines are put together from JSON strings, and bulk answers carry only each
item's status and error (``backend.BULK_FIELDS``).

Tombstones: a destination item with ``_lm_tomb`` true (rule 2) is a delete here, never a
document. While a resync scans the destination, deletes written to the index being built are
tombstone documents instead (so the scan's put-if-absent ``create`` cannot resurrect them);
the resync purges them before the alias moves (see ``livemigrate.search.resync``).

Failures: documents rejected with 429 (and other transient per-document errors) are retried
with capped exponential backoff, only those documents; documents Elasticsearch rejects for
good (mapping errors, 400) are dead-lettered with the reason and the rest continue; a failure
that persists raises ``ApplyFailure(index of the first record of the batch, retryable=True)``
so the engine retries from there (everything before it is applied).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from livemigrate.backoff import Backoff
from livemigrate.clock import Clock, SystemClock
from livemigrate.errors import SearchUnavailable
from livemigrate.records import ApplyFailure, StreamRecord
from livemigrate.retention import DYNAMODB_STREAMS_RETENTION, duration
from livemigrate.search.backend import (
    BulkAction,
    BulkResult,
    DocumentStore,
    Held,
)
from livemigrate.search.batcher import BatchPolicy, chunks
from livemigrate.search.documents import (
    DocumentHook,
    build_document,
    default_document,
    document_id,
    is_tombstone,
)
from livemigrate.search.targets import Targets
from livemigrate.versioning import SEQ_ATTR, TOMBSTONE_ATTR, is_newer

log = logging.getLogger("livemigrate.search")
# One encoder for every document (json.dumps with options builds a new one per call); a
# document is a tree of fresh dicts and lists, so the cycle check is work for nothing.
_to_json = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode

# The sink reads the destination table's DynamoDB stream: its retention (rule 9).
STREAM_RETENTION = DYNAMODB_STREAMS_RETENTION.seconds
# Per-document errors that may pass if retried; anything else in 4xx is permanent.
TRANSIENT_TYPES = frozenset(
    {
        "es_rejected_execution_exception",
        "unavailable_shards_exception",
        "circuit_breaking_exception",
        "cluster_block_exception",
        "node_not_connected_exception",
    }
)


class DeadLetterSink(Protocol):
    def add(self, origin: Any, reason: str, raw: Any, key: Mapping[str, Any]) -> str: ...


@dataclass
class SinkStats:
    """Counters since the sink was built; ``lag_seconds`` of the last record applied."""

    indexed: int = 0
    deleted: int = 0
    tombstoned: int = 0
    stale: int = 0
    dead_lettered: int = 0
    retried: int = 0
    lag_seconds: float = 0.0


class Change(NamedTuple):
    """The intended state of one document after one record (``document`` None = delete).

    A named tuple, not a frozen dataclass: one is built per stream record, and a frozen
    dataclass sets each field through ``object.__setattr__`` (several times the cost).
    """

    position: int
    doc_id: str
    seq: str
    keys: Mapping[str, Any]
    document: Mapping[str, Any] | None
    size: int
    body: str = ""  # the document with its version, as JSON (serialised once)
    inserted: bool = False  # an INSERT record: the document is most likely absent


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff for rejected documents and unavailable nodes."""

    attempts: int = 8
    base: float = 0.05
    cap: float = 5.0

    def delay(self, attempt: int) -> float:
        return Backoff(self.base, self.cap, jitter=False).delay(attempt + 1)  # attempt from 0


@dataclass(frozen=True)
class Indexing:
    """How documents are built and written: what the sink and the resync share.

    Parameters
    ----------
    hook:
        Maps a plain item to its document, or None (not indexed).
    policy:
        Batch limits (documents and bytes per bulk request).
    retry:
        Backoff for rejected documents and an unavailable node.
    clock:
        Time (injectable).
    """

    hook: DocumentHook = default_document
    policy: BatchPolicy = field(default_factory=BatchPolicy)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    clock: Clock = field(default_factory=SystemClock)


class _Persisting(Exception):
    def __init__(self, reason: str, transient: bool = False) -> None:
        self.reason = reason
        self.transient = transient  # the node was unreachable or overloaded (429, 5xx)
        super().__init__(reason)


@dataclass(frozen=True)
class _Prefetch:
    """Versions of the next batch's ids in ``index``, being read in the background."""

    index: str
    held: Future[dict[str, Held]]


@dataclass
class _Round:
    """What one bulk round left to do."""

    again: list[Change] = field(default_factory=list)
    backoff: bool = False
    reason: str = ""
    tombstoned: dict[str, str] = field(default_factory=dict)


class SearchSink:
    """A ``RecordSink`` that keeps search indices equal to the destination table.

    Parameters
    ----------
    backend:
        Where documents go (``ElasticsearchBackend``).
    targets:
        Which indices to write (``ControlTargets`` follows a resync; ``FixedTargets``).
    dead_letters:
        Where documents rejected for good go (origin ``search``).
    indexing:
        The document hook, batch limits, backoff and clock (defaults: ``Indexing()``).
    lag_warning:
        Lag (seconds) from which every batch logs a loud retention warning.
    """

    def __init__(
        self,
        backend: DocumentStore,
        targets: Targets,
        dead_letters: DeadLetterSink,
        indexing: Indexing | None = None,
        *,
        lag_warning: float = DYNAMODB_STREAMS_RETENTION.error_seconds,
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        indexing = indexing or Indexing()
        self.backend = backend
        self.targets = targets
        self.dead_letters = dead_letters
        self.hook = indexing.hook
        self.policy = indexing.policy
        self.retry = indexing.retry
        self.clock = indexing.clock
        self.lag_warning = lag_warning
        self._idle = on_idle
        # Threads start on first use; shared by the engine's shard threads (tasks never wait
        # on each other, so a small pool cannot deadlock).
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="search-sink")
        self._last_live: str | None = None
        # Blind creates pay off while inserted documents are absent; in a replay (a crash, a
        # lost lease) they exist and each would cost a failed create before the read. So the
        # sink stops them when most conflicted and resumes when a read finds most absent.
        self._blind_ok = True
        self.stats = SinkStats()

    def on_idle(self) -> None:
        """Called by the engine at each heartbeat: the CLI's retention watch runs here."""
        if self._idle is not None:
            self._idle()

    # -- RecordSink -------------------------------------------------------------------------
    def apply(self, records: Sequence[StreamRecord]) -> None:
        """Apply records of one shard in order; ApplyFailure if a batch cannot be applied.

        Records are taken ``max_count`` at a time; while one group's requests are in flight
        (the GIL is released during I/O) the next group's documents are built in a helper
        thread, so building documents costs little wall time.
        """
        if not records:
            return
        step = self.policy.max_count
        groups = [(i, records[i : i + step]) for i in range(0, len(records), step)]
        upcoming = self._pool().submit(self._changes, *groups[0])
        for nxt in [*groups[1:], None]:
            changes = upcoming.result()
            if nxt is not None:
                upcoming = self._pool().submit(self._changes, *nxt)
            self._apply_group(changes)
        self._watch_lag(records[-1])

    def _changes(self, offset: int, records: Sequence[StreamRecord]) -> list[Change]:
        built = (self._change(offset + i, r) for i, r in enumerate(records))
        return [c for c in built if c is not None]

    def _apply_group(self, changes: list[Change]) -> None:
        batches = list(chunks(((c, c.size) for c in changes), self.policy))
        prefetched: _Prefetch | None = None
        for j, batch in enumerate(batches):
            following = batches[j + 1] if j + 1 < len(batches) else []
            current, prefetched = prefetched, self._prefetch(batch, following)
            try:
                self.apply_changes(batch, current)
            except _Persisting as exc:
                raise ApplyFailure(
                    batch[0].position, exc.reason, retryable=True, transient=exc.transient
                ) from exc

    def _prefetch(self, batch: list[Change], following: list[Change]) -> _Prefetch | None:
        """Read the next batch's versions while this batch is written, when that is the same.

        Only when the two batches share no document id: this batch's writes cannot change
        what the read returns. Another writer may still change a document in between; its
        conditional write then fails with 409 and is decided again from a fresh read.
        """
        index = self._last_live
        if not following or index is None:
            return None
        if not {c.doc_id for c in batch}.isdisjoint(c.doc_id for c in following):
            return None
        ids = list(dict.fromkeys(c.doc_id for c in following if not self._skips_read(c)))
        if not ids:
            return None
        return _Prefetch(index, self._pool().submit(self.backend.held, index, ids))

    def _pool(self) -> ThreadPoolExecutor:
        return self._executor

    def close(self) -> None:
        """Stop the helper threads (they also end with the process)."""
        self._executor.shutdown(wait=True)

    # -- one batch ----------------------------------------------------------------------------
    def apply_changes(self, changes: Sequence[Change], prefetched: _Prefetch | None = None) -> None:
        """Apply one bounded batch to every target index (newest change per id wins)."""
        latest: dict[str, Change] = {}
        for change in changes:
            latest[change.doc_id] = change  # input is in stream order: the last is the newest
        state = self.targets.current()
        self._last_live = state.indices[0]
        for index in state.indices:
            first = prefetched.held if prefetched and prefetched.index == index else None
            tombstones = index in state.tombstones_in
            written = self._apply_to(index, list(latest.values()), tombstones, first)
            if written:
                self._settle_tombstones(index, written)

    def _apply_to(
        self,
        index: str,
        pending: list[Change],
        tombstones: bool,
        first: Future[dict[str, Held]] | None = None,
    ) -> dict[str, str]:
        tombstoned: dict[str, str] = {}
        for attempt in range(self.retry.attempts):
            outcome = self._round(
                index, pending, tombstones, first if attempt == 0 else None, blind=attempt == 0
            )
            tombstoned.update(outcome.tombstoned)
            pending = outcome.again
            if not pending:
                return tombstoned
            # a blind create that found its document is decided again, not retried
            self.stats.retried += len([c for c in pending if attempt > 0 or not _blind(c)])
            if outcome.backoff:
                self.clock.sleep(self.retry.delay(attempt))
        raise _Persisting(
            f"index {index}: {len(pending)} documents not applied: {outcome.reason}",
            transient=outcome.backoff,
        )

    def _round(
        self,
        index: str,
        pending: list[Change],
        tombstones: bool,
        prefetched: Future[dict[str, Held]] | None,
        *,
        blind: bool = False,
    ) -> _Round:
        """One read-decide-write round; with ``blind``, inserted documents skip the read."""
        skipped: list[Change] = []
        unread: list[Change] = []
        for change in pending:
            (skipped if blind and self._skips_read(change) else unread).append(change)
        try:
            held = self._read(index, unread, prefetched)
        except SearchUnavailable as exc:
            return _Round(again=pending, backoff=True, reason=str(exc))
        if not skipped:
            self._learn_from_read(pending, held)
        planned: list[tuple[Change, BulkAction]] = []
        for change in pending:
            action = self._action(index, change, held.get(change.doc_id), tombstones)
            if action is not None:
                planned.append((change, action))
        if not planned:
            return _Round()
        try:
            results = self.backend.bulk([a for _, a in planned])
        except SearchUnavailable as exc:
            return _Round(again=pending, backoff=True, reason=str(exc))
        out = self._sort_results(planned, results)
        if skipped:
            conflicted = {c.doc_id for c in out.again}
            if 2 * sum(1 for c in skipped if c.doc_id in conflicted) > len(skipped):
                self._blind_ok = False  # mostly present: a replay; read first for now
        return out

    def _read(
        self, index: str, unread: list[Change], prefetched: Future[dict[str, Held]] | None
    ) -> dict[str, Held]:
        if prefetched is not None:
            return prefetched.result()
        return self.backend.held(index, [c.doc_id for c in unread]) if unread else {}

    def _skips_read(self, change: Change) -> bool:
        return self._blind_ok and _blind(change)

    def _learn_from_read(self, pending: list[Change], held: Mapping[str, Held]) -> None:
        inserted = [c for c in pending if _blind(c)]
        if inserted and 2 * sum(1 for c in inserted if c.doc_id in held) <= len(inserted):
            self._blind_ok = True  # mostly absent again: new inserts, blind creates pay off

    def _action(
        self, index: str, change: Change, held: Held | None, tombstones: bool
    ) -> BulkAction | None:
        if held is not None and not is_newer(change.seq, held.seq):
            self.stats.stale += 1
            return None
        occ: dict[str, Any] = {}
        if held is not None:
            occ = {"if_seq_no": held.seq_no, "if_primary_term": held.primary_term}
        source: Mapping[str, Any] | str | None = None
        if change.document is not None:
            source = change.body
        elif tombstones:
            source = {SEQ_ATTR: change.seq, TOMBSTONE_ATTR: True}
        elif held is None:
            return None  # deleting what is not there: nothing to do
        else:
            return BulkAction("delete", index, change.doc_id, **occ)
        return BulkAction("index" if held else "create", index, change.doc_id, source, **occ)

    def _sort_results(
        self, planned: list[tuple[Change, BulkAction]], results: list[BulkResult]
    ) -> _Round:
        out = _Round()
        for (change, action), result in zip(planned, results, strict=True):
            if result.ok:
                self._count(change, action, out)
            elif result.status == 409:
                out.again.append(change)  # another writer got there first: decide again
                out.reason = result.reason or "version conflict"
            elif (
                result.status == 429
                or result.status >= 500
                or result.error_type in (TRANSIENT_TYPES)
            ):
                out.again.append(change)
                out.backoff = True
                out.reason = result.reason or f"status {result.status}"
            else:
                self._dead_letter(change, result)
        return out

    def _count(self, change: Change, action: BulkAction, out: _Round) -> None:
        if action.op == "delete":
            self.stats.deleted += 1
        elif change.document is None:
            self.stats.tombstoned += 1
            out.tombstoned[change.doc_id] = change.seq
        else:
            self.stats.indexed += 1

    def _dead_letter(self, change: Change, result: BulkResult) -> None:
        reason = f"search index rejected document {change.doc_id!r}: {result.reason}"
        log.error("%s", reason)
        raw = {"document": change.document, "seq": change.seq, "id": change.doc_id}
        self.dead_letters.add("search", reason, raw, _plain_keys(change.keys))
        self.stats.dead_lettered += 1

    # -- tombstones written while a resync scans ----------------------------------------------
    def _settle_tombstones(self, index: str, written: dict[str, str]) -> None:
        """Remove tombstones we wrote if the resync stopped scanning meanwhile.

        The resync marks the index ``ready`` and then purges every tombstone it can see; a
        batch that read ``scanning`` before that may write tombstones after the purge. We wrote
        them, then re-read the state: either we see ``ready`` (we purge them here) or our
        writes came before the mark, hence before the resync's purge (it removes them).
        """
        if index in self.targets.current().tombstones_in:
            return
        held = self.backend.held(index, list(written))
        actions = [
            BulkAction("delete", index, doc_id, if_seq_no=h.seq_no, if_primary_term=h.primary_term)
            for doc_id, h in held.items()
            if h.tombstone and h.seq == written[doc_id]
        ]
        self.backend.bulk(actions)  # a 409 means a newer write replaced it: nothing to purge

    # -- records -> changes ----------------------------------------------------------------
    def _change(self, position: int, record: StreamRecord) -> Change | None:
        doc_id = document_id(record.keys)
        document: Mapping[str, Any] | None = None
        if record.event_name != "REMOVE":
            if record.new_image is None:
                self._reject(record, "stream record has no NewImage (needs NEW_AND_OLD_IMAGES)")
                return None
            if not is_tombstone(record.new_image):
                try:
                    document = build_document(self.hook, record.new_image)
                except (ValueError, TypeError, KeyError) as exc:
                    self._reject(record, f"document hook failed: {type(exc).__name__}: {exc}")
                    return None
        seq = record.sequence_number
        if document is None:
            return Change(position, doc_id, seq, record.keys, None, 64)
        body = _to_json({**document, SEQ_ATTR: seq})
        inserted = record.event_name == "INSERT"
        return Change(position, doc_id, seq, record.keys, document, len(body), body, inserted)

    def _reject(self, record: StreamRecord, reason: str) -> None:
        log.error("search sink: %s (keys %s)", reason, record.keys)
        raw = {"event": record.event_name, "seq": record.sequence_number, "new": record.new_image}
        self.dead_letters.add("search", reason, raw, record.keys)
        self.stats.dead_lettered += 1

    # -- retention guard ------------------------------------------------------------------------
    def _watch_lag(self, last: StreamRecord) -> None:
        if not last.approximate_creation:
            return
        lag = max(0.0, self.clock.now() - last.approximate_creation)
        self.stats.lag_seconds = lag
        if lag >= self.lag_warning:
            log.warning("%s", retention_warning(lag))


def retention_warning(lag_seconds: float) -> str:
    """The loud message when the sink nears the destination stream's retention."""
    return (
        f"SEARCH SINK IS {lag_seconds / 3600:.1f} h BEHIND the destination stream, which keeps "
        f"records for {duration(STREAM_RETENTION)}: changes older than that are trimmed and "
        "would be lost to the index. Run `livemigrate search resync` to rebuild the index from "
        "a scan of the destination table (changes made meanwhile are kept)."
    )


def _blind(change: Change) -> bool:
    """Whether the first write of ``change`` is a ``create`` without reading the index first."""
    return change.inserted and change.document is not None


def _plain_keys(keys: Mapping[str, Any]) -> dict[str, Any]:
    return {name: next(iter(value.values())) for name, value in keys.items()}
