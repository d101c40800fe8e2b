"""An export's manifests: where it is, when it was taken, and its data files.

Layout written by DynamoDB's ``ExportTableToPointInTime`` (format DYNAMODB_JSON)::

    <prefix>/AWSDynamoDB/<ExportId>/manifest-summary.json   one JSON object: exportArn,
                                                            exportTime, s3Bucket, s3Prefix,
                                                            manifestFilesS3Key, itemCount,
                                                            outputFormat, ...
    <prefix>/AWSDynamoDB/<ExportId>/manifest-files.json     one JSON object a line: itemCount,
                                                            md5Checksum (base64 MD5 of the
                                                            object), etag (S3 ETag),
                                                            dataFileS3Key
    <prefix>/AWSDynamoDB/<ExportId>/data/<name>.json.gz     gzip, one {"Item": {...}} a line

An export is named by the S3 URI of its folder or by its ExportArn (resolved with
DescribeExport, which gives the bucket, prefix and the summary manifest's key).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from livemigrate.errors import PreflightError

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_s3 import S3Client

SUMMARY = "manifest-summary.json"
FILES = "manifest-files.json"
FORMAT = "DYNAMODB_JSON"


@dataclass(frozen=True)
class DataFile:
    """One line of manifest-files.json."""

    key: str
    item_count: int
    md5: str  # base64 MD5 of the object's bytes (the gzip), as the manifest gives it
    etag: str  # the object's S3 ETag when the export wrote it (quotes stripped)

    @classmethod
    def from_line(cls, line: dict[str, Any]) -> DataFile:
        return cls(
            key=str(line["dataFileS3Key"]),
            item_count=int(line["itemCount"]),
            md5=str(line["md5Checksum"]),
            etag=str(line.get("etag", "")).strip('"'),
        )


@dataclass(frozen=True)
class Export:
    """What the summary manifest says about an export, and its data files."""

    arn: str
    bucket: str
    folder: str  # key prefix of the export's folder, ending in "/"
    export_time: float  # epoch seconds
    item_count: int
    files: tuple[DataFile, ...]

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.folder}"


def parse_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/prefix/AWSDynamoDB/<id>/`` -> (bucket, folder key ending in "/")."""
    if not uri.startswith("s3://") or "/" not in uri[5:]:
        raise PreflightError(
            f"{uri!r} is not an export: expected s3://<bucket>/<prefix>/AWSDynamoDB/<ExportId>/ "
            "or an ExportArn",
            "pass the folder that holds manifest-summary.json, or the export's ARN "
            "(livemigrate export status shows it)",
        )
    bucket, _, folder = uri[5:].partition("/")
    folder = folder.removesuffix(SUMMARY)
    return bucket, folder if folder.endswith("/") else f"{folder}/"


def locate(where: str, dynamodb: DynamoDBClient) -> tuple[str, str]:
    """(bucket, folder) of an export named by its folder's S3 URI or its ExportArn."""
    if not where.startswith("arn:"):
        return parse_uri(where)
    try:
        desc = dynamodb.describe_export(ExportArn=where)["ExportDescription"]
    except ClientError as exc:
        if exc.response["Error"].get("Code") != "ExportNotFoundException":
            raise
        raise PreflightError(
            f"no export {where!r} is known to DynamoDB",
            "check the ARN (livemigrate export status), or pass the export folder's S3 URI",
        ) from exc
    if desc.get("ExportStatus") != "COMPLETED":
        raise PreflightError(
            f"export {where} is {desc.get('ExportStatus')}, not COMPLETED",
            "wait for it (livemigrate export status), then run the backfill again",
        )
    manifest = str(desc.get("ExportManifest") or "")
    if manifest:
        return desc["S3Bucket"], manifest.removesuffix(SUMMARY)
    export_id = where.rsplit("/", 1)[-1]
    prefix = str(desc.get("S3Prefix") or "")
    prefix = f"{prefix.rstrip('/')}/" if prefix else ""
    return desc["S3Bucket"], f"{prefix}AWSDynamoDB/{export_id}/"


def read(s3: S3Client, bucket: str, folder: str) -> Export:
    """Read both manifests (small: one line per data file; data files are never read here)."""
    summary = _json_object(s3, bucket, folder + SUMMARY)
    if summary.get("outputFormat", FORMAT) != FORMAT:
        raise PreflightError(
            f"export {folder} is in {summary.get('outputFormat')} format; only {FORMAT} is read",
            "request a new export with `livemigrate export start` (it asks for DYNAMODB_JSON)",
        )
    files_key = str(summary.get("manifestFilesS3Key") or folder + FILES)
    body = _get(s3, bucket, files_key)["Body"]
    files = tuple(DataFile.from_line(json.loads(line)) for line in body.iter_lines() if line)
    return Export(
        arn=str(summary.get("exportArn", "")),
        bucket=bucket,
        folder=folder,
        export_time=parse_time(str(summary["exportTime"])),
        item_count=int(summary.get("itemCount", sum(f.item_count for f in files))),
        files=files,
    )


def parse_time(text: str) -> float:
    """An ISO-8601 time as the manifest writes it ("2020-11-04T07:28:34.028Z")."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _json_object(s3: S3Client, bucket: str, key: str) -> dict[str, Any]:
    loaded = json.loads(_get(s3, bucket, key)["Body"].read())
    return dict(loaded)


def _get(s3: S3Client, bucket: str, key: str) -> Any:
    try:
        return s3.get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response["Error"].get("Code") not in ("NoSuchKey", "NoSuchBucket", "404"):
            raise
        raise PreflightError(
            f"s3://{bucket}/{key} does not exist: not a (complete) DynamoDB export",
            "pass the folder that holds manifest-summary.json "
            "(s3://<bucket>/<prefix>/AWSDynamoDB/<ExportId>/); an export still running has none "
            "yet: wait for it (livemigrate export status)",
        ) from exc
