"""Rebuild the search index from a scan of the destination table while changes continue.

``resync`` is the answer when the sink falls behind the stream's 24-hour retention, or when the
index is lost or mis-mapped. It applies the backfill's rules to documents:

1. create the new index ``<alias>-<migration id>-r<epoch>``;
2. record it in the control table as ``building`` / ``scanning``: from the next batch on, every
   sink process writes each change to it too, and writes deletes there as tombstone documents;
3. scan the destination table (consistent reads) and write each item's document with the bulk
   ``create`` op type and ``_lm_seq`` = the backfill sequence (all zeros): **put-if-absent**.
   A document the live sink already wrote (newer by definition), or a tombstone it left for a
   delete, makes the ``create`` fail with 409: counted as superseded, never an overwrite, so a
   delete made during the scan cannot be undone by a scan page read before it. Items that are
   tombstones in the destination are skipped;
4. mark the index ``ready`` (sinks stop writing tombstones), refresh, and purge the tombstone
   documents with ``_delete_by_query`` (conditional per document, a newer write survives);
   a sink batch that read ``scanning`` before the mark purges its own tombstones afterwards
   (see ``SearchSink._settle_tombstones``);
5. make it the sink's only live index and, only when that is safe, point the alias at it in
   one atomic ``_aliases`` request. The previous index is kept until ``livemigrate search
   cleanup``.

The alias is the application's: before the cutover it serves the old schema's documents, so a
resync never moves it then (the cutover points it at the sink's live index, which is now the
new one). It moves when the alias already points at one of this migration's indices (after the
cutover, or a ``swap-alias``), or when the caller says so (``move_alias=True``: the CLI passes
it after the cutover or with ``--move-alias-before-cutover``).

Why it is complete: every change committed to the destination before step 2 is seen by the
scan (it reads after step 2), and every stream record a sink reads after step 2 is applied to
the new index with the version rule, which a scan document (sequence zero) never beats.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from livemigrate.errors import PreflightError, SearchUnavailable, ServiceUnreachable
from livemigrate.items import key_of
from livemigrate.search.backend import BulkAction, SearchBackend
from livemigrate.search.batcher import chunks
from livemigrate.search.documents import build_document, document_id, is_tombstone
from livemigrate.search.indices import IndexConfig, owned_by, resync_index
from livemigrate.search.sink import TRANSIENT_TYPES, DeadLetterSink, Indexing
from livemigrate.search.targets import READY, SCANNING, ControlTargets
from livemigrate.versioning import BACKFILL_SEQ, SEQ_ATTR

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

log = logging.getLogger("livemigrate.search")


@dataclass
class ResyncReport:
    index: str
    scanned: int = 0
    created: int = 0
    superseded: int = 0
    skipped: int = 0
    dead_lettered: int = 0
    tombstones_purged: int = 0
    previous: tuple[str, ...] = ()  # indices replaced (the alias's and the sink's): kept
    alias_moved: bool = False
    alias_indices: tuple[str, ...] = ()  # what the alias points at after the resync


@dataclass(frozen=True)
class TableSource:
    """The destination table to scan (client injected)."""

    client: DynamoDBClient
    table: str
    key_names: tuple[str, ...]
    page_size: int = 500

    def items(self) -> Iterator[dict[str, Any]]:
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "ConsistentRead": True,
            "Limit": self.page_size,
        }
        while True:
            page = self.client.scan(**kwargs)
            yield from page.get("Items", [])
            if "LastEvaluatedKey" not in page:
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


class Resync:
    """One resync of a migration's index; see the module docstring for the steps."""

    def __init__(
        self,
        backend: SearchBackend,
        targets: ControlTargets,
        dead_letters: DeadLetterSink,
        indexing: Indexing,
        *,
        alias: str,
        migration_id: str,
        config: IndexConfig,
    ) -> None:
        self.backend = backend
        self.targets = targets
        self.dead_letters = dead_letters
        self.alias = alias
        self.migration_id = migration_id
        self.hook = indexing.hook
        self.config = config
        self.policy = indexing.policy
        self.retry = indexing.retry
        self.clock = indexing.clock

    def run(
        self, source: TableSource, epoch: int | None = None, *, move_alias: bool | None = None
    ) -> ResyncReport:
        """Rebuild the index; ``move_alias`` None: move it only if it is already this
        migration's (see the module docstring), True: move it, False: leave it."""
        epoch = int(time.time()) if epoch is None else epoch
        report = ResyncReport(resync_index(self.alias, self.migration_id, epoch))
        self.backend.create_index(report.index, self.config.settings, self.config.mappings)
        self.targets.record(building=report.index, building_state=SCANNING, alias=self.alias)
        log.info("resync: building %s from a scan of %s", report.index, source.table)
        self.load(source, report)
        self.targets.record(building_state=READY)
        report.tombstones_purged = self.backend.delete_tombstones(report.index)
        replaced = {self.targets.current().indices[0]}  # the sink's live index until now
        if move_alias is None:
            move_alias = self._alias_is_ours()
        if move_alias:
            replaced.update(self.backend.swap_alias(self.alias, report.index))
            report.alias_moved = True
        report.previous = tuple(sorted(replaced - {report.index}))
        self.targets.clear_building(report.index)
        report.alias_indices = tuple(self.backend.alias_indices(self.alias))
        log.info("resync: %s built (alias moved: %s)", report.index, report.alias_moved)
        return report

    def _alias_is_ours(self) -> bool:
        """The alias points only at this migration's indices (the application reads them)."""
        current = self.backend.alias_indices(self.alias)
        return bool(current) and all(
            owned_by(name, self.alias, self.migration_id) for name in current
        )

    # -- put-if-absent load ----------------------------------------------------------------
    def load(self, source: TableSource, report: ResyncReport) -> None:
        for batch in chunks(self._documents(source, report), self.policy):
            self._create(report.index, batch, report)

    def _documents(
        self, source: TableSource, report: ResyncReport
    ) -> Iterator[tuple[tuple[Mapping[str, Any], dict[str, Any]], int]]:
        for item in source.items():
            report.scanned += 1
            if is_tombstone(item):
                report.skipped += 1
                continue
            keys = key_of(item, source.key_names)
            try:
                doc = build_document(self.hook, item)
            except (ValueError, TypeError, KeyError) as exc:
                self._dead_letter(keys, None, f"document hook failed: {exc}", report)
                continue
            if doc is None:
                report.skipped += 1
                continue
            doc[SEQ_ATTR] = BACKFILL_SEQ
            yield (keys, doc), len(str(doc))

    def _create(
        self, index: str, batch: Sequence[tuple[Mapping[str, Any], dict[str, Any]]], r: ResyncReport
    ) -> None:
        pending = list(batch)
        for attempt in range(self.retry.attempts):
            actions = [BulkAction("create", index, document_id(k), d) for k, d in pending]
            try:
                results = self.backend.bulk(actions)
            except SearchUnavailable:
                self.clock.sleep(self.retry.delay(attempt))
                continue
            again = []
            for (keys, doc), result in zip(pending, results, strict=True):
                if result.ok:
                    r.created += 1
                elif result.status == 409:
                    r.superseded += 1  # the live sink wrote it (or a tombstone) first
                elif (
                    result.status == 429
                    or result.status >= 500
                    or (result.error_type in TRANSIENT_TYPES)
                ):
                    again.append((keys, doc))
                else:
                    self._dead_letter(keys, doc, str(result.reason), r)
            if not again:
                return
            pending = again
            self.clock.sleep(self.retry.delay(attempt))
        raise ServiceUnreachable(
            f"resync: {len(pending)} documents still rejected by {index} after retries",
            "the search node is overloaded or down: check its health, then run "
            "`livemigrate search resync` again (a new index is built; this one can be cleaned up)",
        )

    def _dead_letter(
        self,
        keys: Mapping[str, Any],
        doc: Mapping[str, Any] | None,
        reason: str,
        report: ResyncReport,
    ) -> None:
        log.error("resync: %s (keys %s)", reason, keys)
        self.dead_letters.add("search", f"resync: {reason}", {"document": doc}, keys)
        report.dead_lettered += 1


def swap_to_live(
    backend: SearchBackend, targets: ControlTargets, alias: str, index: str | None = None
) -> tuple[str, list[str]]:
    """Point ``alias`` at the sink's live index (or ``index``) in one ``_aliases`` request.

    This is the search half of cutover (and of rollback, with the previous index). Returns the
    index now behind the alias and the indices it was removed from (kept, not deleted).
    """
    target = index or targets.current().indices[0]
    if not backend.index_exists(target):
        raise PreflightError(
            f"search index {target!r} does not exist",
            "run `livemigrate search sync` first (it creates the index), or name an existing one",
        )
    return target, backend.swap_alias(alias, target)


def cleanup(
    backend: SearchBackend, alias: str, migration_id: str, keep: Sequence[str] = ()
) -> list[str]:
    """Delete this migration's indices that the alias does not point at (and not in ``keep``)."""
    current = set(backend.alias_indices(alias)) | set(keep)
    deleted = []
    for name in _migration_indices(backend, alias, migration_id):
        if name not in current and backend.delete_index(name):
            deleted.append(name)
    return deleted


def _migration_indices(backend: SearchBackend, alias: str, migration_id: str) -> list[str]:
    pattern = f"{alias}-{migration_id}*".lower()
    return [n for n in backend.list_indices(pattern) if owned_by(n, alias, migration_id)]
