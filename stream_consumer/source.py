"""Where shards and records come from: DynamoDB Streams through boto3, behind a small protocol.

The engine never calls boto3 directly; it talks to a ``ShardSource`` so that the same loop runs
against moto/AWS (``BotoShardSource``) and against the scripted splitting stream
(``stream_consumer.scripted``) that tests shard lineage moto cannot produce.

Service errors become the typed exceptions below (matched on error codes, never on text), so
the loop can decide: re-open an iterator, restart from the trim horizon, or back off.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from botocore.exceptions import ClientError

from livemigrate.records import StreamRecord

if TYPE_CHECKING:
    from mypy_boto3_dynamodbstreams import DynamoDBStreamsClient


@dataclass(frozen=True)
class ShardInfo:
    """One shard as DescribeStream lists it."""

    shard_id: str
    parents: tuple[str, ...] = ()
    closed: bool = False  # an ending sequence number is known: the shard will not grow


@dataclass(frozen=True)
class Page:
    """One GetRecords answer: raw records (boto3 form) and where to read next.

    ``next_iterator`` is None once a closed shard has been read to its end.
    """

    records: Sequence[Mapping[str, Any]]
    next_iterator: str | None
    extra: Mapping[str, Any] = field(default_factory=dict)


class StreamReadError(Exception):
    """Base of the errors a source raises for the loop to handle."""


class IteratorExpired(StreamReadError):
    """The shard iterator is older than 15 minutes (or otherwise invalid): open a new one."""


class DataTrimmed(StreamReadError):
    """The requested position is older than the stream's retention: records may be lost."""


class Throttled(StreamReadError):
    """The service asked us to slow down."""


class ShardGone(StreamReadError):
    """The shard (or the stream) no longer exists."""


class ShardSource(Protocol):
    """DescribeStream / GetShardIterator / GetRecords, as the engine needs them."""

    @property
    def stream_arn(self) -> str: ...

    def list_shards(self) -> list[ShardInfo]:
        """Every shard of the stream, all pages, parents listed with each."""
        ...

    def iterator(self, shard_id: str, after: str | None) -> str:
        """An iterator just after ``after`` (a padded sequence number), or at the trim horizon."""
        ...

    def get_records(self, iterator: str, limit: int) -> Page:
        """At most ``limit`` records from ``iterator``."""
        ...


@runtime_checkable
class ParsesRecords(Protocol):
    """A source whose raw records are not DynamoDB Streams records (Kinesis): it parses them."""

    def parse(self, raw: Mapping[str, Any], shard_id: str) -> StreamRecord:
        """One raw record of ``shard_id`` as a ``StreamRecord`` (``position`` set)."""
        ...


def parser_of(source: object) -> Callable[[Mapping[str, Any], str], StreamRecord]:
    """How the engine turns ``source``'s raw records into ``StreamRecord``s."""
    if isinstance(source, ParsesRecords):
        return source.parse
    return StreamRecord.from_boto


_THROTTLE_CODES = frozenset(
    {
        "LimitExceededException",
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "KMSThrottlingException",
    }
)


def translate_error(exc: ClientError) -> StreamReadError | None:
    """The typed error for a service error code shared by DynamoDB Streams and Kinesis."""
    code = exc.response.get("Error", {}).get("Code", "")
    if code == "ExpiredIteratorException":
        return IteratorExpired(str(exc))
    if code == "TrimmedDataAccessException":
        return DataTrimmed(str(exc))
    if code in _THROTTLE_CODES:
        return Throttled(str(exc))
    if code == "ResourceNotFoundException":
        return ShardGone(str(exc))
    return None


def raw_sequence(padded: str) -> str:
    """The sequence number as the service wants it back (our padded form without the zeros)."""
    return padded.lstrip("0") or "0"


class BotoShardSource:
    """A ``ShardSource`` over a DynamoDB Streams client (moto, LocalStack or AWS).

    Parameters
    ----------
    client:
        A ``dynamodbstreams`` client (injected).
    stream_arn:
        The stream to read (the source table's ``LatestStreamArn``).
    """

    def __init__(self, client: DynamoDBStreamsClient, stream_arn: str) -> None:
        self.client = client
        self._arn = stream_arn

    @property
    def stream_arn(self) -> str:
        return self._arn

    def list_shards(self) -> list[ShardInfo]:
        shards: dict[str, ShardInfo] = {}
        start: str | None = None
        while True:
            kwargs: dict[str, Any] = {"StreamArn": self._arn, "Limit": 100}
            if start is not None:
                kwargs["ExclusiveStartShardId"] = start
            desc = self._call(self.client.describe_stream, **kwargs)["StreamDescription"]
            for shard in desc.get("Shards", []):
                parent = shard.get("ParentShardId")
                ending = shard.get("SequenceNumberRange", {}).get("EndingSequenceNumber")
                shards.setdefault(
                    shard["ShardId"],
                    ShardInfo(shard["ShardId"], (parent,) if parent else (), ending is not None),
                )
            last = desc.get("LastEvaluatedShardId")
            # Some emulators ignore ExclusiveStartShardId; a repeated page ends the walk too.
            if not last or last == start:
                return list(shards.values())
            start = last

    def iterator(self, shard_id: str, after: str | None) -> str:
        kwargs: dict[str, Any] = {"StreamArn": self._arn, "ShardId": shard_id}
        if after is None:
            kwargs["ShardIteratorType"] = "TRIM_HORIZON"
        else:
            kwargs["ShardIteratorType"] = "AFTER_SEQUENCE_NUMBER"
            kwargs["SequenceNumber"] = raw_sequence(after)
        return str(self._call(self.client.get_shard_iterator, **kwargs)["ShardIterator"])

    def get_records(self, iterator: str, limit: int) -> Page:
        resp = self._call(self.client.get_records, ShardIterator=iterator, Limit=limit)
        return Page(records=resp.get("Records", []), next_iterator=resp.get("NextShardIterator"))

    @staticmethod
    def _call(fn: Any, **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except ClientError as exc:
            mapped = translate_error(exc)
            if mapped is None:
                raise
            raise mapped from exc
