"""Reading the source: Scan pages of a segment and Query pages of a hot key's sort-key range.

Reads are eventually consistent on purpose: anything written after a page was read reaches the
destination through the stream, which always wins over the backfill (rules 1-2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from livemigrate.errors import PreflightError
from livemigrate.items import TypedItem
from livemigrate.ratelimit import Deadline, RateLimiter

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient


@dataclass(frozen=True)
class Page:
    items: list[TypedItem]
    last_key: dict[str, Any] | None  # None: the unit is finished


@dataclass(frozen=True)
class SegmentReader:
    """Scan pages of segment ``segment`` of ``total``."""

    client: DynamoDBClient
    table: str
    segment: int
    total: int
    limit: int
    limiter: RateLimiter
    deadline: Deadline | None = None  # the read cap never waits past it (PastDeadline)

    def page(self, start: dict[str, Any] | None) -> Page:
        kwargs: dict[str, Any] = {"TableName": self.table, "Limit": self.limit}
        if self.total > 1:  # one segment is the whole table (and moto crashes on it: issue 11)
            kwargs.update(Segment=self.segment, TotalSegments=self.total)
        if start is not None:
            kwargs["ExclusiveStartKey"] = start
        try:
            resp = self.limiter.call(
                self.limit, lambda: self.client.scan(**kwargs), deadline=self.deadline
            )
        except ClientError as exc:
            crash = emulator_crash(exc, self)
            if crash is None:
                raise
            raise crash from exc
        return Page(list(resp.get("Items", [])), resp.get("LastEvaluatedKey"))


def emulator_crash(exc: ClientError, reader: SegmentReader) -> PreflightError | None:
    """A clear error for an HTTP 500 that carries no DynamoDB error code: the endpoint itself
    crashed (moto's server does on a segmented Scan of a table with a binary hash key, issue
    11); DynamoDB's own 500s carry a code and stay retryable."""
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if status != 500 or exc.response.get("Error", {}).get("Code") != "500":
        return None
    return PreflightError(
        f"the DynamoDB endpoint crashed (HTTP 500, no DynamoDB error) on a Scan of "
        f"{reader.table!r}, segment {reader.segment} of {reader.total}; moto's server does "
        "this on segmented scans of a table whose hash key is binary",
        "against the emulator, start a new plan with --total-segments 1 (a new migration id)",
    )


@dataclass(frozen=True)
class RangeReader:
    """Query pages of one partition key, sort key in (start, upper]."""

    client: DynamoDBClient
    table: str
    hash_name: str
    range_name: str
    hash_value: dict[str, Any]
    upper: dict[str, Any]
    limit: int
    limiter: RateLimiter
    deadline: Deadline | None = None  # the read cap never waits past it (PastDeadline)

    def page(self, start: dict[str, Any]) -> Page:
        resp = self.limiter.call(
            self.limit,
            lambda: self.client.query(
                TableName=self.table,
                KeyConditionExpression="#h = :h AND #r <= :hi",
                ExpressionAttributeNames={"#h": self.hash_name, "#r": self.range_name},
                ExpressionAttributeValues={":h": self.hash_value, ":hi": self.upper},
                ExclusiveStartKey=start,
                Limit=self.limit,
            ),
            deadline=self.deadline,
        )
        return Page(list(resp.get("Items", [])), resp.get("LastEvaluatedKey"))


def last_sort_key(
    client: DynamoDBClient,
    table: str,
    *,
    hash_name: str,
    range_name: str,
    hash_value: dict[str, Any],
    limiter: RateLimiter,
) -> dict[str, Any] | None:
    """The largest sort key held under ``hash_value`` (one item read), or None if none."""
    resp = limiter.call(
        1,
        lambda: client.query(
            TableName=table,
            KeyConditionExpression="#h = :h",
            ExpressionAttributeNames={"#h": hash_name, "#r": range_name},
            ExpressionAttributeValues={":h": hash_value},
            ProjectionExpression="#h, #r",
            ScanIndexForward=False,
            Limit=1,
        ),
    )
    items = resp.get("Items", [])
    return dict(items[0][range_name]) if items else None
