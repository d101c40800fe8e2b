"""Fixture exports in DynamoDB's real layout, written to an S3 bucket (moto's, over HTTP).

moto's ``export_table_to_point_in_time`` writes no manifests and ignores ExportTime (issue 16),
so the tests and the bench write exports the way DynamoDB lays them out::

    <prefix>/AWSDynamoDB/<ExportId>/manifest-summary.json
    <prefix>/AWSDynamoDB/<ExportId>/manifest-files.json
    <prefix>/AWSDynamoDB/<ExportId>/data/<name>.json.gz
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from livemigrate.values import to_dynamodb_json

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


@dataclass
class Written:
    uri: str
    arn: str
    folder: str
    data_keys: list[str] = field(default_factory=list)


def gzip_lines(items: Iterable[dict[str, Any]], members: int = 1) -> bytes:
    """The items as export lines, gzipped (in ``members`` concatenated gzip members)."""
    lines = [json.dumps({"Item": to_dynamodb_json(it)}).encode() + b"\n" for it in items]
    size = max(1, -(-len(lines) // members))
    parts = [b"".join(lines[i : i + size]) for i in range(0, len(lines), size)] or [b""]
    return b"".join(gzip.compress(part, compresslevel=1) for part in parts)


def md5_b64(body: bytes) -> str:
    return base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()


def write_export(
    s3: S3Client,
    bucket: str,
    files: Sequence[Sequence[dict[str, Any]]],
    export_time: float,
    *,
    prefix: str = "exports",
    damaged: Iterable[int] = (),
    table: str = "source",
) -> Written:
    """Write an export of typed ``files`` (one list of items per data file).

    A file whose index is in ``damaged`` is stored with one byte changed after its checksum
    was taken (its manifest line keeps the original ``md5Checksum`` and ``itemCount``, and the
    stored object's ETag, as a corruption at rest would look).
    """
    export_id = f"{int(export_time * 1000):014d}-{os.urandom(4).hex()}"
    arn = f"arn:aws:dynamodb:us-east-1:123456789012:table/{table}/export/{export_id}"
    folder = f"{prefix}/AWSDynamoDB/{export_id}/"
    written = Written(f"s3://{bucket}/{folder}", arn, folder)
    bad = set(damaged)
    manifest = []
    for n, items in enumerate(files):
        body = gzip_lines(items, members=2 if n % 2 else 1)
        md5 = md5_b64(body)
        if n in bad:
            body = _damage(body)
        key = f"{folder}data/{os.urandom(8).hex()}.json.gz"
        etag = s3.put_object(Bucket=bucket, Key=key, Body=body)["ETag"].strip('"')
        written.data_keys.append(key)
        line = {"itemCount": len(items), "md5Checksum": md5, "etag": etag, "dataFileS3Key": key}
        manifest.append(json.dumps(line))
    files_key = folder + "manifest-files.json"
    s3.put_object(Bucket=bucket, Key=files_key, Body=("\n".join(manifest) + "\n").encode())
    summary = {
        "version": "2020-06-30",
        "exportArn": arn,
        "startTime": _iso(export_time),
        "endTime": _iso(export_time + 60),
        "tableArn": f"arn:aws:dynamodb:us-east-1:123456789012:table/{table}",
        "exportTime": _iso(export_time),
        "s3Bucket": bucket,
        "s3Prefix": prefix,
        "manifestFilesS3Key": files_key,
        "billedSizeBytes": 0,
        "itemCount": sum(len(f) for f in files),
        "outputFormat": "DYNAMODB_JSON",
        "exportType": "FULL_EXPORT",
    }
    s3.put_object(Bucket=bucket, Key=folder + "manifest-summary.json", Body=json.dumps(summary))
    return written


def _damage(body: bytes) -> bytes:
    # Change one byte of the deflate data: it still decompresses (or not), but its MD5 differs.
    middle = len(body) // 2
    return body[:middle] + bytes([body[middle] ^ 0x01]) + body[middle + 1 :]


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
