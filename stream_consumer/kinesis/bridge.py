"""A local stand-in for a table's Kinesis streaming destination (tests and the demo).

moto implements Kinesis but not the DynamoDB -> Kinesis link
(``enable_kinesis_streaming_destination`` raises NotImplementedError), so this bridge reads the
table's DynamoDB stream and puts each change into a Kinesis stream in the destination's record
format (``stream_consumer.kinesis.records.change_record``), partitioned by the item's key.

Creation times: DynamoDB Streams stamp records to the second (moto to its clock); a real
destination stamps each change in microseconds. The bridge keeps the table's order by making
each stamp at least one microsecond later than the one before it (records of one item are in
order on the DynamoDB stream), so versions order like the table's changes.

``Chaos`` makes the bridge do what AWS documents the real destination may do: put a record
more than once (``duplicate_every``) and out of order within a window of records
(``reorder_window``), deterministically from ``seed``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from livemigrate.backoff import Backoff
from livemigrate.values import key_text
from livemigrate.versioning import pad_seq
from stream_consumer.kinesis.records import change_record
from stream_consumer.kinesis.source import stream_ref
from stream_consumer.source import BotoShardSource, StreamReadError

if TYPE_CHECKING:
    from mypy_boto3_dynamodbstreams import DynamoDBStreamsClient
    from mypy_boto3_kinesis import KinesisClient

log = logging.getLogger("livemigrate.kinesis.bridge")

PUT_BATCH = 500  # PutRecords takes at most 500 records


@dataclass(frozen=True)
class Chaos:
    """How unfaithful the bridge is: every ``duplicate_every``-th record is put twice, and
    records are shuffled within windows of ``reorder_window`` records (0: never)."""

    duplicate_every: int = 0
    reorder_window: int = 0
    seed: int = 0


def partition_key(keys: Mapping[str, Any]) -> str:
    """The item's partition key in Kinesis: one item, one shard (until the stream reshards)."""
    return hashlib.sha256(key_text(keys).encode()).hexdigest()


def create_stream(client: KinesisClient, name: str, shards: int = 2, wait: float = 30.0) -> str:
    """Create a Kinesis stream (if absent), wait until it is ACTIVE, return its ARN."""
    with contextlib.suppress(client.exceptions.ResourceInUseException):
        client.create_stream(StreamName=name, ShardCount=shards)
    deadline = time.monotonic() + wait
    while True:
        summary = client.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
        if summary["StreamStatus"] == "ACTIVE" or time.monotonic() > deadline:
            return str(summary["StreamARN"])
        time.sleep(0.1)


class StreamBridge:
    """Copies a table's DynamoDB stream into a Kinesis stream (see the module docstring).

    Parameters
    ----------
    streams:
        A ``dynamodbstreams`` client.
    kinesis:
        A ``kinesis`` client.
    table_stream_arn:
        The table's stream (``LatestStreamArn``).
    kinesis_stream:
        The Kinesis stream's name or ARN.
    table_name:
        Written into each record's ``tableName``.
    chaos:
        Duplicates and reordering (none by default).
    """

    def __init__(
        self,
        streams: DynamoDBStreamsClient,
        kinesis: KinesisClient,
        table_stream_arn: str,
        kinesis_stream: str,
        table_name: str,
        *,
        chaos: Chaos | None = None,
    ) -> None:
        self.reader = BotoShardSource(streams, table_stream_arn)
        self.kinesis = kinesis
        self.stream = kinesis_stream
        self.table_name = table_name
        self.chaos = chaos or Chaos()
        self._rng = random.Random(self.chaos.seed)
        self._after: dict[str, str | None] = {}
        self._iterators: dict[str, str | None] = {}
        self._done: set[str] = set()
        self._shards: list[str] = []
        self._listed_at = float("-inf")
        self._last_micros = 0
        self._seen = 0
        self._lock = threading.Lock()
        self.copied = 0  # changes read from the table's stream
        self.put = 0  # Kinesis records put (duplicates included)

    def pump(self) -> int:
        """Copy every change the table's stream holds now; the number of changes copied."""
        with self._lock:
            changes: list[dict[str, Any]] = []
            for shard_id in self._list():
                if shard_id not in self._done:
                    changes.extend(self._read_shard(shard_id))
            self._put(self._scramble(changes))
            self.copied += len(changes)
            return len(changes)

    def run(self, stop: threading.Event, interval: float = 0.2) -> None:
        """Pump until ``stop`` is set (the demo runs this on a thread)."""
        while not stop.is_set():
            try:
                self.pump()
            except (ClientError, BotoCoreError):  # a test helper: log and keep bridging
                log.exception("bridge pump failed; retrying")
            stop.wait(interval)

    def _list(self) -> list[str]:
        """The table stream's shards, listed again every few seconds (new shards are rare)."""
        if time.monotonic() - self._listed_at >= 5.0:
            self._shards = [s.shard_id for s in self.reader.list_shards()]
            self._listed_at = time.monotonic()
        return self._shards

    def _read_shard(self, shard_id: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        iterator = self._iterators.get(shard_id)
        if iterator is None:
            iterator = self.reader.iterator(shard_id, self._after.get(shard_id))
        while iterator is not None:
            try:
                page = self.reader.get_records(iterator, 1000)
            except StreamReadError:
                self._iterators[shard_id] = None  # reopened after the last copied record
                return out
            for raw in page.records:
                out.append(self._convert(raw))
                self._after[shard_id] = pad_seq(str(raw["dynamodb"]["SequenceNumber"]))
            iterator = page.next_iterator
            if not page.records:
                break
        self._iterators[shard_id] = iterator
        if iterator is None:
            self._done.add(shard_id)
        return out

    def _convert(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        body = raw["dynamodb"]
        created = body.get("ApproximateCreationDateTime", 0)
        seconds = created.timestamp() if isinstance(created, datetime) else float(created)
        micros = max(int(seconds * 1_000_000), self._last_micros + 1)
        self._last_micros = micros
        return change_record(
            raw["eventName"],
            body["Keys"],
            body.get("NewImage"),
            body.get("OldImage"),
            micros,
            table_name=self.table_name,
            user_identity=raw.get("userIdentity"),
        )

    def _scramble(self, changes: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Duplicates and reordering within windows, as ``chaos`` says."""
        every, window = self.chaos.duplicate_every, self.chaos.reorder_window
        out: list[dict[str, Any]] = []
        size = window if window > 1 else max(1, len(changes))
        for start in range(0, len(changes), size):
            chunk = list(changes[start : start + size])
            for change in list(chunk):
                self._seen += 1
                if every and self._seen % every == 0:
                    chunk.append(change)
            if window > 1:
                self._rng.shuffle(chunk)
            out.extend(chunk)
        return out

    def _put(self, records: Sequence[dict[str, Any]]) -> None:
        entries = [
            {
                "Data": json.dumps(r, separators=(",", ":")).encode(),
                "PartitionKey": partition_key(r["dynamodb"]["Keys"]),
            }
            for r in records
        ]
        for start in range(0, len(entries), PUT_BATCH):
            self._put_batch(entries[start : start + PUT_BATCH])

    def _put_batch(self, entries: list[dict[str, Any]]) -> None:
        for attempt in range(10):
            resp = self.kinesis.put_records(Records=entries, **stream_ref(self.stream))  # type: ignore[arg-type]
            failed = [e for e, r in zip(entries, resp["Records"], strict=True) if "ErrorCode" in r]
            self.put += len(entries) - len(failed)
            if not failed:
                return
            entries = failed
            time.sleep(Backoff(base=0.05, cap=1.0, jitter=False).delay(attempt + 1))
        raise RuntimeError(f"PutRecords kept failing for {len(entries)} record(s)")
