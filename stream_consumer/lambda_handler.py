"""AWS Lambda handler for a DynamoDB Streams event source mapping (same apply code).

Configure the mapping with ``FunctionResponseTypes: [ReportBatchItemFailures]``. Records of a
batch are applied in order by ``DestinationApplier``; a transform failure is dead-lettered and the
batch goes on (rule 6); any other failure stops the batch there and reports that record and every
later one as failed (their ``SequenceNumber``), so Lambda retries from it and order holds.

Settings come from the function's environment (``LIVEMIGRATE_*``), read once per container.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from livemigrate.deadletters import DeadLetters
from livemigrate.fencing import WindowClosed
from livemigrate.records import ApplyFailure, RecordSink, StreamRecord
from stream_consumer.engine import json_safe_record

_STATE: dict[str, Any] = {}


def handle(event: Mapping[str, Any], sink: RecordSink, dead_letters: DeadLetters) -> dict[str, Any]:
    """Apply one event's records; the ``batchItemFailures`` response."""
    raws = list(event.get("Records", []))
    records = [StreamRecord.from_boto(raw) for raw in raws]
    start = 0
    while start < len(records):
        try:
            sink.apply(records[start:])
        except WindowClosed:
            continue  # the tombstone decision got too old: apply again with a fresh one
        except ApplyFailure as failure:
            at = start + failure.index
            if failure.retryable:
                return _failures(raws[at:])
            dead_letters.add(
                "stream", failure.reason, json_safe_record(records[at]), records[at].keys
            )
            start = at + 1
            continue
        break
    return {"batchItemFailures": []}


def _failures(raws: list[Mapping[str, Any]]) -> dict[str, Any]:
    return {
        "batchItemFailures": [
            {"itemIdentifier": str(raw["dynamodb"]["SequenceNumber"])} for raw in raws
        ]
    }


def handler(event: Mapping[str, Any], context: object) -> dict[str, Any]:
    """The Lambda entry point (``stream_consumer.lambda_handler.handler``)."""
    if "sink" not in _STATE:
        from livemigrate.aws import make_clients
        from livemigrate.config import load_settings
        from livemigrate.migration import open_migration
        from stream_consumer.applier import DestinationApplier
        from stream_consumer.metrics import Metrics

        settings = load_settings()
        migration = open_migration(settings, make_clients(settings))
        # The backfill refuses to start before a consumer has (rule 9): the mapping counts.
        migration.store.put(
            "CONSUMER#source",
            {
                "stream_arn": migration.source.stream_arn,
                "start_position": "event source mapping (its own starting position)",
                "started_at": time.time(),
            },
            only_if_absent=True,
        )
        metrics = Metrics("source")
        _STATE["sink"] = DestinationApplier.for_migration(migration, metrics)
        _STATE["dead_letters"] = migration.dead_letters
    return handle(event, _STATE["sink"], _STATE["dead_letters"])
