"""Drives a Lambda handler the way a DynamoDB Streams event source mapping does (issue 15).

Reads the table's real stream on moto from TRIM_HORIZON, hands the handler batches in shard
order in Lambda's event shape (``ApproximateCreationDateTime`` as epoch seconds,
``eventSourceARN``), and on a partial failure (``batchItemFailures``) delivers the batch again
from the first failed record, as the mapping does with ``ReportBatchItemFailures``. ``enabled``
False stands for a disabled or stuck mapping. moto's server cannot invoke functions without
Docker, so the tests play the mapping themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from livemigrate.aws import AwsClients

Handler = Callable[[Mapping[str, Any], object], Mapping[str, Any]]


def lambda_record(raw: Mapping[str, Any], arn: str) -> dict[str, Any]:
    """One GetRecords record as the mapping puts it into the event."""
    body = dict(raw["dynamodb"])
    created = body.get("ApproximateCreationDateTime")
    if isinstance(created, datetime):
        body["ApproximateCreationDateTime"] = created.timestamp()
    return {**raw, "dynamodb": body, "eventSourceARN": arn, "eventSource": "aws:dynamodb"}


@dataclass
class StreamMapping:
    clients: AwsClients
    table: str
    handler: Handler
    batch_size: int = 100
    enabled: bool = True
    pending: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    iterators: dict[str, str] = field(default_factory=dict)
    responses: list[Mapping[str, Any]] = field(default_factory=list)
    arn: str = ""

    def __post_init__(self) -> None:
        desc = self.clients.dynamodb.describe_table(TableName=self.table)["Table"]
        self.arn = desc["LatestStreamArn"]

    def _read(self) -> None:
        streams = self.clients.streams
        shards = streams.describe_stream(StreamArn=self.arn)["StreamDescription"]["Shards"]
        for shard in shards:
            sid = shard["ShardId"]
            if sid not in self.iterators:
                self.iterators[sid] = streams.get_shard_iterator(
                    StreamArn=self.arn, ShardId=sid, ShardIteratorType="TRIM_HORIZON"
                )["ShardIterator"]
            resp = streams.get_records(ShardIterator=self.iterators[sid], Limit=1000)
            self.iterators[sid] = resp.get("NextShardIterator") or self.iterators[sid]
            batch = [lambda_record(r, self.arn) for r in resp["Records"]]
            self.pending.setdefault(sid, []).extend(batch)

    def pump(self) -> int:
        """One round: every shard with records gets one invocation; invocations made."""
        if not self.enabled:
            return 0
        self._read()
        made = 0
        for sid, records in self.pending.items():
            if not records:
                continue
            batch, rest = records[: self.batch_size], records[self.batch_size :]
            response = self.handler({"Records": batch}, None)
            self.responses.append(response)
            made += 1
            failed = {f["itemIdentifier"] for f in response.get("batchItemFailures", [])}
            first = next(
                (i for i, r in enumerate(batch) if r["dynamodb"]["SequenceNumber"] in failed),
                len(batch),
            )
            self.pending[sid] = batch[first:] + rest
        return made

    def drain(self, rounds: int = 20) -> None:
        """Pump until nothing is pending (a record that keeps failing stops it after rounds)."""
        for _ in range(rounds):
            self.pump()
            if not any(self.pending.values()):
                return
        raise AssertionError(f"the mapping did not drain in {rounds} rounds: {self.pending}")
