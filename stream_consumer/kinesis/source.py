"""The built-in Kinesis reader: a ``ShardSource`` over a Kinesis data stream.

The consumer engine (``stream_consumer.engine``) runs unchanged over it: leases, checkpoints,
parents before children, dead letters, metrics and ``status``. Differences from DynamoDB
Streams that the engine never sees:

- shards come from ListShards (paged by NextToken); a merged shard has two parents
  (``ParentShardId`` and ``AdjacentParentShardId``), both finished before it is read;
- records are parsed by ``stream_consumer.kinesis.records``: the version is the creation time,
  the checkpoint position the Kinesis sequence number (``StreamRecord.at``);
- the stream is named by name or ARN (``kinesis_stream``); leases record its ARN.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from livemigrate.records import StreamRecord
from stream_consumer.kinesis.records import parse_kinesis_record
from stream_consumer.source import Page, ShardInfo, raw_sequence, translate_error

if TYPE_CHECKING:
    from mypy_boto3_kinesis import KinesisClient

# GetRecords returns at most 10,000 records (and 10 MiB) per call.
MAX_LIMIT = 10_000


def stream_ref(stream: str) -> dict[str, str]:
    """The request parameter naming ``stream``: an ARN or a name."""
    return {"StreamARN": stream} if stream.startswith("arn:") else {"StreamName": stream}


def stream_arn_of(client: KinesisClient, stream: str) -> str:
    """The ARN of a stream given by name or ARN (DescribeStreamSummary)."""
    summary = client.describe_stream_summary(**stream_ref(stream))
    return str(summary["StreamDescriptionSummary"]["StreamARN"])


class KinesisShardSource:
    """A ``ShardSource`` over a Kinesis data stream (moto, LocalStack or AWS).

    Parameters
    ----------
    client:
        A ``kinesis`` client (injected).
    stream:
        The stream's name or ARN.
    stream_arn:
        Its ARN when already known (saves a DescribeStreamSummary).
    """

    def __init__(self, client: KinesisClient, stream: str, stream_arn: str | None = None) -> None:
        self.client = client
        self.stream = stream
        self._arn = stream_arn or (stream if stream.startswith("arn:") else None)
        self._closed: set[str] = set()
        self._shard_of: dict[str, str] = {}  # open iterator -> its shard

    @property
    def stream_arn(self) -> str:
        if self._arn is None:
            self._arn = self._call(stream_arn_of, self.client, self.stream)
        return self._arn

    def list_shards(self) -> list[ShardInfo]:
        shards: dict[str, ShardInfo] = {}
        kwargs: dict[str, Any] = {**stream_ref(self.stream)}
        while True:
            resp = self._call(self.client.list_shards, **kwargs)
            for shard in resp.get("Shards", []):
                parents = tuple(
                    p for p in (shard.get("ParentShardId"), shard.get("AdjacentParentShardId")) if p
                )
                ending = shard.get("SequenceNumberRange", {}).get("EndingSequenceNumber")
                if ending is not None:
                    self._closed.add(shard["ShardId"])
                shards.setdefault(
                    shard["ShardId"], ShardInfo(shard["ShardId"], parents, ending is not None)
                )
            token = resp.get("NextToken")
            if not token:
                return list(shards.values())
            kwargs = {"NextToken": token}  # ListShards takes the token alone

    def iterator(self, shard_id: str, after: str | None) -> str:
        kwargs: dict[str, Any] = {**stream_ref(self.stream), "ShardId": shard_id}
        if after is None:
            kwargs["ShardIteratorType"] = "TRIM_HORIZON"
        else:
            kwargs["ShardIteratorType"] = "AFTER_SEQUENCE_NUMBER"
            kwargs["StartingSequenceNumber"] = raw_sequence(after)
        iterator = str(self._call(self.client.get_shard_iterator, **kwargs)["ShardIterator"])
        self._shard_of[iterator] = shard_id
        return iterator

    def get_records(self, iterator: str, limit: int) -> Page:
        resp = self._call(
            self.client.get_records, ShardIterator=iterator, Limit=min(limit, MAX_LIMIT)
        )
        records = resp.get("Records", [])
        behind = resp.get("MillisBehindLatest", 0)
        shard = self._shard_of.pop(iterator, None)
        following = resp.get("NextShardIterator")
        if following is not None and not records and behind == 0 and shard in self._closed:
            # A closed shard read to its end: Kinesis answers a null NextShardIterator, moto
            # keeps handing out iterators; nothing more can come, so end it either way.
            following = None
        if following is not None and shard is not None:
            self._shard_of[following] = shard
        return Page(records, following, {"millis_behind": behind})

    def parse(self, raw: Mapping[str, Any], shard_id: str) -> StreamRecord:
        """A Kinesis record (boto3 form: ``Data`` bytes, ``SequenceNumber``)."""
        return parse_kinesis_record(
            raw["Data"], sequence_number=str(raw["SequenceNumber"]), shard_id=shard_id
        )

    @staticmethod
    def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ClientError as exc:
            mapped = translate_error(exc)
            if mapped is None:
                raise
            raise mapped from exc
