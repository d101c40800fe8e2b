"""``livemigrate backfill --from-export``: the wiring between the command and the export engine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from backfill.export.datafile import LineReader
from backfill.export.engine import ExportEngine
from backfill.export.manifest import Export, locate, read
from backfill.export.plan import check_export_time, iso
from backfill.export.s3 import make_s3_client
from backfill.preflight import dry_run_transformer, show_sample
from backfill.worker import Options
from livemigrate.aws import AwsClients
from livemigrate.config import Settings
from livemigrate.items import TypedItem
from livemigrate.migration import Migration

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


@dataclass(frozen=True)
class ExportSource:
    """An export to load and the S3 client that reads it."""

    export: Export
    s3: S3Client

    def engine(self, migration: Migration, options: Options) -> ExportEngine:
        """The engine, once the export is known to be recent enough for the consumer."""
        check_export_time(migration, self.export)
        return ExportEngine(migration, options, self.s3, self.export)

    def sample(self, count: int) -> list[TypedItem]:
        """The first ``count`` items of the export (streamed; the rest is not read)."""
        items: list[TypedItem] = []
        for data in self.export.files:
            if len(items) >= count:
                break
            reader = LineReader(self.s3, self.export.bucket, data, data.etag, count - len(items))
            try:
                items += reader.page(None).items
            finally:
                reader.close()
        return items


def open_export(where: str, settings: Settings, clients: AwsClients) -> ExportSource:
    """The export named by its folder's S3 URI or its ExportArn, with its manifests read."""
    s3 = make_s3_client(settings)
    bucket, folder = locate(where, clients.dynamodb)
    return ExportSource(read(s3, bucket, folder), s3)


def dry_run(
    source: ExportSource, settings: Settings, clients: AwsClients, sample: int, out: TextIO
) -> int:
    """Transform the export's first items and print them; writes nothing anywhere."""
    transformer = dry_run_transformer(settings, clients, out)
    items = source.sample(sample)
    show_sample(transformer, items, out)
    export = source.export
    print(
        f"dry run: transformed {len(items)} sample item(s) of export {export.uri} "
        f"({len(export.files)} data files, {export.item_count} items, taken at "
        f"{iso(export.export_time)}); nothing was written",
        file=out,
    )
    return 0
