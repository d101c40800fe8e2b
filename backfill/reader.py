"""Reading the source: Scan pages of a segment and Query pages of a hot key's sort-key range.

Reads are eventually consistent on purpose: anything written after a page was read reaches the
destination through the stream, which always wins over the backfill (rules 1-2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "Segment": self.segment,
            "TotalSegments": self.total,
            "Limit": self.limit,
        }
        if start is not None:
            kwargs["ExclusiveStartKey"] = start
        resp = self.limiter.call(
            self.limit, lambda: self.client.scan(**kwargs), deadline=self.deadline
        )
        return Page(list(resp.get("Items", [])), resp.get("LastEvaluatedKey"))


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
