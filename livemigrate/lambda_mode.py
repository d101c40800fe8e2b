"""The stream consumer as a Lambda function (``infra/aws/livemigrate.yaml``): what the cutover
needs to know about it.

An event source mapping invokes the function only when the stream has records, so a quiet
source sends no invocation and no heartbeat: a heartbeat cannot prove the drain. Instead the
cutover writes a *watermark* item into the source table after the fence (after the last write
any application can still make). Its stream record comes after every earlier record of its
shard, and the handler reports it (``WATERMARK#<token>`` in the control table) only after it
applied everything before it in its batch. The cutover writes watermarks until every open shard
of the source stream has one, waits until all are reported, then deletes them (the handler skips
watermark records, so neither write reaches the destination).

That proof holds per shard with one batch lane per shard: with a ``ParallelizationFactor`` above
1, Lambda runs several batches of one shard at once (split by partition key), and a watermark
proves only its own lane. The lag gate refuses that case and says what to do.

The mapping's ``OnFailure`` queue holds batches Lambda gave up on: records not applied. Its depth
is a cutover gate (``failed_batches_gate`` in ``livemigrate.gates``, setting
``failure_queue_url``).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from livemigrate.clock import Clock
from livemigrate.control import ControlStore
from livemigrate.errors import PreflightError
from livemigrate.keys import WATERMARK_PREFIX
from livemigrate.records import StreamRecord
from livemigrate.tables import TableInfo

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodbstreams import DynamoDBStreamsClient

MODE = "lambda"
WATERMARK_ATTR = "_lm_watermark"
# Watermarks written per open shard at most before the drain gives up (keys hash to shards).
TRIES_PER_SHARD = 16


def watermark_of(record: StreamRecord) -> tuple[bool, str | None]:
    """(is a watermark record, its token if it is the write that must be reported)."""
    image = record.new_image if record.new_image is not None else record.old_image
    if not image or WATERMARK_ATTR not in image:
        return False, None
    if record.event_name == "REMOVE":
        return True, None  # the cutover's clean-up: nothing to report
    return True, str(image[WATERMARK_ATTR].get("S", ""))


def report_seen(store: ControlStore, token: str, now: float) -> None:
    """The handler applied every record before this watermark (``WATERMARK#<token>``)."""
    store.put(WATERMARK_PREFIX + token, {"seen_at": now})


def watermark_item(source: TableInfo, token: str) -> dict[str, Any]:
    """The source item carrying ``token``: a reserved key no application item uses."""
    value = f"_lm_watermark#{token}"
    item: dict[str, Any] = {WATERMARK_ATTR: {"S": token}}
    for name in source.key_names:
        kind = source.key_types[name]
        if kind == "N" and name == source.hash_key:
            raise PreflightError(
                f"the source table's partition key {name!r} is a number: livemigrate cannot "
                "write a watermark item that no application item could collide with",
                "cut over with the consumer as a process (`livemigrate consume`, its heartbeat "
                "proves the drain), or stop writers yourself and run `livemigrate cutover` "
                "without --fenced once the event source mapping's IteratorAge is 0",
            )
        item[name] = {"N": "0"} if kind == "N" else {kind: value.encode() if kind == "B" else value}
    return item


@dataclass
class Watermarks:
    """Writes watermarks into the source table and waits for the Lambda consumer to report them.

    Parameters
    ----------
    dynamodb, streams:
        Clients for the source table and its stream.
    source:
        The source table (its key schema and stream ARN).
    store:
        The migration's control store (where the handler reports watermarks).
    """

    dynamodb: DynamoDBClient
    streams: DynamoDBStreamsClient
    source: TableInfo
    store: ControlStore
    written: list[dict[str, Any]] = field(default_factory=list)

    def prove_drained(self, clock: Clock, deadline: float, poll: float) -> bool:
        """True once a watermark written now has been reported from every open shard."""
        token = uuid.uuid4().hex
        tokens: list[str] = []
        try:
            iterators = self._latest_iterators()
            pending = set(iterators)
            while pending and len(tokens) < TRIES_PER_SHARD * len(iterators):
                tokens.append(f"{token}-{len(tokens)}")
                self._write(tokens[-1])
                pending -= self._shards_reached(iterators, tokens[-1], clock, deadline, poll)
                if clock.now() >= deadline:
                    return False
            if pending:
                return False
            return self._wait_seen(tokens, clock, deadline, poll)
        finally:
            self._clean_up()

    def _latest_iterators(self) -> dict[str, str]:
        """A LATEST iterator for every open shard (no ending sequence number)."""
        arn = str(self.source.stream_arn)
        shards: list[Mapping[str, Any]] = []
        start: dict[str, str] = {}
        while True:
            desc = self.streams.describe_stream(StreamArn=arn, **start)["StreamDescription"]  # type: ignore[arg-type]
            shards.extend(desc.get("Shards", []))
            last = desc.get("LastEvaluatedShardId")
            if not last:
                break
            start = {"ExclusiveStartShardId": last}
        return {
            s["ShardId"]: self.streams.get_shard_iterator(
                StreamArn=arn, ShardId=s["ShardId"], ShardIteratorType="LATEST"
            )["ShardIterator"]
            for s in shards
            if "EndingSequenceNumber" not in s.get("SequenceNumberRange", {})
        }

    def _write(self, token: str) -> None:
        item = watermark_item(self.source, token)
        self.dynamodb.put_item(TableName=self.source.name, Item=item)
        self.written.append({k: item[k] for k in self.source.key_names})

    def _shards_reached(
        self, iterators: dict[str, str], token: str, clock: Clock, deadline: float, poll: float
    ) -> set[str]:
        """The shards whose new records include ``token`` (the iterators move on)."""
        reached: set[str] = set()
        while not reached and clock.now() < deadline:
            for shard, it in list(iterators.items()):
                resp = self.streams.get_records(ShardIterator=it)
                iterators[shard] = resp.get("NextShardIterator") or it
                for raw in resp.get("Records", []):
                    is_mark, seen = watermark_of(StreamRecord.from_boto(raw))
                    if is_mark and seen == token:
                        reached.add(shard)
            if not reached:
                clock.sleep(poll)
        return reached

    def _wait_seen(self, tokens: list[str], clock: Clock, deadline: float, poll: float) -> bool:
        waiting = list(tokens)
        while waiting:
            waiting = [t for t in waiting if self.store.get(WATERMARK_PREFIX + t) is None]
            if not waiting:
                return True
            if clock.now() >= deadline:
                return False
            clock.sleep(poll)
        return True

    def _clean_up(self) -> None:
        for key in self.written:
            self.dynamodb.delete_item(TableName=self.source.name, Key=key)
        self.written.clear()


@dataclass(frozen=True)
class FailureQueue:
    """The event source mapping's OnFailure queue (batches Lambda gave up on)."""

    sqs: Any
    url: str

    def depth(self) -> int:
        """Messages in the queue, visible or in flight."""
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=self.url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attrs.get("ApproximateNumberOfMessages", 0)) + int(
            attrs.get("ApproximateNumberOfMessagesNotVisible", 0)
        )
