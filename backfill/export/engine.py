"""The export backfill's engine and workers: the Scan backfill's, reading data files instead.

Claims, leases and their fences, the page loop (write through the transform with
put-if-absent, checkpoint after apply), budgets, the write cap, dead letters, outage handling
and completion are the Scan backfill's own (``backfill.worker``); only the reading differs. A
unit is one data file; its checkpoint is the line after the last written item. A file is
loaded only after a first streaming pass found it equal to its manifest (checksum, item count,
ETag); a file that is not is refused: nothing of it is written, its unit stays undone (the plan
cannot complete, so the cutover gates stay shut) and the command names it.

The read cap (items/s read from the source table) does not apply: an export is read from S3
and costs the table nothing. The write cap does.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from backfill import plan
from backfill.export.datafile import ExportPage, LineReader, verify
from backfill.export.manifest import DataFile, Export
from backfill.export.plan import REFUSED, data_file, ensure_export_plan
from backfill.keys import load_key
from backfill.lease import UnitLease
from backfill.reader import Page
from backfill.worker import Engine, Hook, Options, Worker
from backfill.writes import PageWriter, Stats
from livemigrate.clock import Clock
from livemigrate.errors import LeaseLost
from livemigrate.migration import Migration
from livemigrate.ratelimit import PastDeadline

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)


class ExportEngine(Engine):
    """One process's workers loading the data files of ``export``."""

    def __init__(
        self,
        migration: Migration,
        options: Options,
        s3: S3Client,
        export: Export,
        *,
        clock: Clock | None = None,
        stats: Stats | None = None,
    ) -> None:
        super().__init__(migration, options, clock, stats)
        self.s3 = s3
        self.export = export

    def plan(self, claim: bool = False) -> int:
        """Write the export's plan if none exists; returns its number of units (files).
        ``claim``: this process runs the plan next, alone (``plan.Leases``)."""
        return self.adopt(
            self.health.call(
                lambda: ensure_export_plan(self.store, self.export, self.leases(claim))
            )
        )

    def new_worker(self, owner: str, writer: PageWriter) -> Worker:
        return ExportWorker(self, owner, writer)


class ExportWorker(Worker):
    """Claims file units and loads each: verify, then stream pages of lines."""

    def __init__(self, engine: ExportEngine, owner: str, writer: PageWriter) -> None:
        super().__init__(engine, owner, writer)
        self.s3 = engine.s3
        self.bucket = engine.export.bucket

    def settled_unit(self, unit: plan.Unit) -> bool:
        return unit.done or unit.item.get("state") == REFUSED

    def complete_plan(self) -> bool:
        """Called once the listing shows every unit done or refused: refused files never
        finish, so nothing is left to do even when the plan cannot complete."""
        super().complete_plan()
        return True

    def work(self, unit: plan.Unit, lease: UnitLease) -> None:
        try:
            self._work_file(unit, lease)
        except LeaseLost as exc:
            log.warning("%s: leaving %s (%s)", self.owner, unit.sk, exc)

    def _work_file(self, unit: plan.Unit, lease: UnitLease) -> None:
        data = data_file(unit.item)
        etag = str(unit.item.get("verified_etag") or "") or self._verified(unit, lease, data)
        if not etag:
            return
        reader = LineReader(self.s3, self.bucket, data, etag, self.options.page_size)
        start = load_key(unit.item.get("checkpoint"))
        try:
            self._drain(unit, lease, reader.page, start, self._keep_etag(etag))
        except ClientError as exc:
            if exc.response["Error"].get("Code") not in ("PreconditionFailed", "412"):
                raise
            self._refuse(unit, lease, data, "it was replaced after it was verified")
        finally:
            reader.close()

    def _verified(self, unit: plan.Unit, lease: UnitLease, data: DataFile) -> str:
        """The first pass; the verified ETag, or "" (refused, or the budget ran out: released)."""
        try:
            verdict = self._call(
                lambda: verify(
                    self.s3, self.bucket, data, lease.keep_alive, self.budget.writes_left
                )
            )
        except PastDeadline:
            self._stop(lease)
            return ""
        if verdict.problem is not None:
            self._refuse(unit, lease, data, verdict.problem)
            return ""
        # Saved with the first checkpoint (``_keep_etag``), not on its own: a holder that dies
        # before it only costs its successor another first pass (issue 18).
        return verdict.etag

    @staticmethod
    def _keep_etag(etag: str) -> Hook:
        """The page hook that saves the verified ETag with every checkpoint of the file."""

        def after_page(_: Page, last: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], int]:
            return last, {"verified_etag": etag}, 0

        return after_page

    def _refuse(self, unit: plan.Unit, lease: UnitLease, data: DataFile, problem: str) -> None:
        log.error("export data file %s does not match its manifest: %s", data.key, problem)
        self._call(lambda: lease.renew({"state": REFUSED, "refused": problem}))
        self._stop(lease)

    def prefix_position(self, page: Page, done: int) -> dict[str, Any]:
        """The line after the first ``done`` items of ``page``."""
        first = page.first_line if isinstance(page, ExportPage) else 0
        return {"line": first + done}
