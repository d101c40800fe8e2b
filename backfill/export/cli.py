"""``livemigrate export start | status``: request an export of the source to S3, follow it.

``start`` refuses unless the migration's stream consumer has started (an export taken before it
misses the changes made in between: exit 2, naming the fix) and point-in-time recovery is on
(exit 2, naming the command that enables it); it asks for ``ExportTime`` = now, in
DYNAMODB_JSON, and records the export in the control table (``EXPORT#<ExportId>``).
``status`` shows every recorded export's progress (DescribeExport) and what to run next.
Exit status: 0 done, 2 bad input or an unmet precondition, 6 endpoint unreachable.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from backfill.export.plan import iso
from livemigrate import keys
from livemigrate.aws import AwsClients
from livemigrate.config import Settings
from livemigrate.control import ControlStore
from livemigrate.errors import PreflightError
from livemigrate.exitcodes import ExitCode
from livemigrate.keys import CONSUMER_SOURCE, EXPORT_PREFIX
from livemigrate.tables import describe

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

PITR_FIX = (
    "enable point-in-time recovery on the source (it has a storage cost: README, Backfill from "
    "an S3 export): aws dynamodb update-continuous-backups --table-name {table} "
    "--point-in-time-recovery-specification PointInTimeRecoveryEnabled=true"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``export start --bucket B [--prefix P]`` and ``export status``."""
    sub = parser.add_subparsers(dest="export_command", required=True, metavar="ACTION")
    start = sub.add_parser("start", help="request an export of the source table to S3 (now)")
    start.add_argument("--bucket", required=True, help="S3 bucket the export is written to")
    start.add_argument("--prefix", default="", help="key prefix inside the bucket (optional)")
    start.add_argument("--json", action="store_true", help="print the export as JSON")
    status = sub.add_parser("status", help="progress of the exports requested for this migration")
    status.add_argument("--json", action="store_true", help="print the exports as JSON")


def run(args: argparse.Namespace, settings: Settings, clients: AwsClients) -> int:
    """Run the action; see the module docstring for exit codes."""
    store = ControlStore(clients.dynamodb, settings.control_table, settings.migration_id)
    if args.export_command == "start":
        shown = [start(settings, clients.dynamodb, store, args.bucket, args.prefix)]
    else:
        shown = refresh(clients.dynamodb, store)
    if args.json:
        print(json.dumps(shown, sort_keys=True))
    else:
        print("\n".join(describe_line(e) for e in shown) or "no export requested yet")
    return ExitCode.OK


def start(
    settings: Settings, dynamodb: DynamoDBClient, store: ControlStore, bucket: str, prefix: str
) -> dict[str, Any]:
    """Request the export (ExportTime now) after the checks; returns the recorded export."""
    started = consumer_start(store)
    table = settings.source_table
    describe(dynamodb, table, "source")
    if not pitr_enabled(dynamodb, table):
        raise PreflightError(
            f"point-in-time recovery is off on the source {table!r}; DynamoDB exports need it",
            PITR_FIX.format(table=table),
        )
    now = time.time()
    if now < started:  # this machine's clock is behind the consumer's
        raise PreflightError(
            f"this machine's clock ({iso(now)}) is before the stream consumer's start "
            f"({iso(started)})",
            "fix the clock (NTP), then run `livemigrate export start` again",
        )
    desc = _request(dynamodb, table, bucket, prefix, now)
    record = {
        "export_arn": desc["ExportArn"],
        "bucket": bucket,
        "prefix": prefix,
        "export_time": now,
        "requested_at": now,
        "consumer_started_at": started,
        "status": desc.get("ExportStatus", "IN_PROGRESS"),
    }
    store.put(keys.export(export_id(desc["ExportArn"])), record)
    return record


def consumer_start(store: ControlStore) -> float:
    """When the source-stream consumer started; refuses when none has."""
    consumer = store.get(CONSUMER_SOURCE) if store.exists() else None
    if consumer is None:
        raise PreflightError(
            f"no stream consumer has started for migration {store.migration_id!r}; an export "
            "taken now would miss every change made before the consumer starts",
            "start it first (livemigrate consume), then run `livemigrate export start` again",
        )
    return float(consumer["started_at"])


def pitr_enabled(dynamodb: DynamoDBClient, table: str) -> bool:
    desc = dynamodb.describe_continuous_backups(TableName=table)["ContinuousBackupsDescription"]
    pitr = desc.get("PointInTimeRecoveryDescription", {})
    return pitr.get("PointInTimeRecoveryStatus") == "ENABLED"


def _request(
    dynamodb: DynamoDBClient, table: str, bucket: str, prefix: str, at: float
) -> dict[str, Any]:
    arn = dynamodb.describe_table(TableName=table)["Table"]["TableArn"]
    kwargs: dict[str, Any] = {
        "TableArn": arn,
        "S3Bucket": bucket,
        "ExportFormat": "DYNAMODB_JSON",
        "ExportTime": datetime.fromtimestamp(at, tz=UTC),
    }
    if prefix:
        kwargs["S3Prefix"] = prefix
    try:
        return dict(dynamodb.export_table_to_point_in_time(**kwargs)["ExportDescription"])
    except ClientError as exc:
        if exc.response["Error"].get("Code") != "PointInTimeRecoveryUnavailableException":
            raise
        raise PreflightError(
            f"DynamoDB refused the export of {table!r}: point-in-time recovery is unavailable",
            PITR_FIX.format(table=table),
        ) from exc


def export_id(arn: str) -> str:
    """The ExportId: the ARN's last path element (also the export's folder name in S3)."""
    return arn.rsplit("/", 1)[-1]


def refresh(dynamodb: DynamoDBClient, store: ControlStore) -> list[dict[str, Any]]:
    """Every recorded export with its progress from DescribeExport (saved back)."""
    shown = []
    for sk, record in store.query(EXPORT_PREFIX) if store.exists() else []:
        try:
            desc = dynamodb.describe_export(ExportArn=str(record["export_arn"]))
        except ClientError as exc:
            if exc.response["Error"].get("Code") != "ExportNotFoundException":
                raise
            record["status"] = "UNKNOWN"
        else:
            record.update(_progress(desc["ExportDescription"]))
            store.update(sk, _progress(desc["ExportDescription"]))
        shown.append(_plain(record))
    return shown


def _progress(desc: Any) -> dict[str, Any]:
    return {
        "status": desc.get("ExportStatus"),
        "item_count": int(desc.get("ItemCount") or 0),
        "billed_bytes": int(desc.get("BilledSizeBytes") or 0),
        "manifest": desc.get("ExportManifest") or None,
        "failure": desc.get("FailureMessage") or None,
    }


def _plain(record: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in record.items() if not k.startswith(("pk", "sk"))}
    for name in ("export_time", "requested_at", "consumer_started_at"):
        if out.get(name) is not None:
            out[name] = float(out[name])
    for name in ("item_count", "billed_bytes"):
        if out.get(name) is not None:
            out[name] = int(out[name])
    return out


def describe_line(export: dict[str, Any]) -> str:
    """One export for people: ARN, status, time, what to run next."""
    text = (
        f"export {export['export_arn']}: {export.get('status')}, taken at "
        f"{iso(float(export['export_time']))} into s3://{export['bucket']}/{export['prefix']}"
    )
    if export.get("status") == "COMPLETED":
        text += (
            f"; {export.get('item_count', 0)} items\n  next: livemigrate backfill --from-export "
            f"{export['export_arn']}"
        )
    elif export.get("status") == "FAILED":
        text += f": {export.get('failure')}\n  fix: request a new one (livemigrate export start)"
    else:
        text += "\n  next: wait, then `livemigrate export status` again"
    return text
