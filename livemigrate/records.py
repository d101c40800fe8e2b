"""Stream records at the boundary, and the contract between the consumer engine and its sinks.

A DynamoDB Streams record is parsed once into a ``StreamRecord`` (typed images kept as they
are, the sequence number padded so that it orders as a string). The consumer engine
(``stream_consumer``) reads shards, keeps leases and checkpoints, and hands records to a
``RecordSink``: the destination-table applier, or the search sink. Sinks never see leases and
never checkpoint (CONVENTIONS.md: only the loop checkpoints, after apply).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal, Protocol

from livemigrate.items import TypedItem
from livemigrate.versioning import pad_seq

EventName = Literal["INSERT", "MODIFY", "REMOVE"]

# DynamoDB Streams round ApproximateCreationDateTime down to the second: a record stamped T was
# made in [T, T + 1). Decisions by time (rules 13 and the echo window of livemigrate.replication)
# also allow for this much disagreement between DynamoDB's clock and ours.
STREAM_TIME_PRECISION: Final = 1.0
CLOCK_SKEW: Final = 0.5


@dataclass(frozen=True)
class StreamRecord:
    """One change of one item, in the form every sink works with."""

    event_name: EventName
    keys: TypedItem
    new_image: TypedItem | None
    old_image: TypedItem | None
    sequence_number: str  # padded: compare as strings
    approximate_creation: float  # epoch seconds
    shard_id: str = ""
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    # Where the record sits in its shard, for checkpoints, when that is not its version: a
    # Kinesis record's version is its creation time, its position the Kinesis sequence number
    # (``stream_consumer.kinesis.records``). Empty: the version is the position (DynamoDB
    # Streams).
    position: str = ""

    @property
    def at(self) -> str:
        """The record's position in its shard (padded: compare as strings within one shard)."""
        return self.position or self.sequence_number

    def made_before(self, moment: float) -> bool:
        """Whether the change was certainly made before ``moment`` (rounding and skew allowed)."""
        return self.approximate_creation + STREAM_TIME_PRECISION + CLOCK_SKEW <= moment

    @classmethod
    def from_boto(cls, record: Mapping[str, Any], shard_id: str = "") -> StreamRecord:
        """Parse a record as boto3's GetRecords (or a Lambda event) gives it."""
        name = record["eventName"]
        if name not in ("INSERT", "MODIFY", "REMOVE"):
            raise ValueError(f"unknown stream event name {name!r}")
        body = record["dynamodb"]
        created = body.get("ApproximateCreationDateTime", 0)
        when = created.timestamp() if isinstance(created, datetime) else float(created)
        return cls(
            event_name=name,
            keys=_keys(body),
            new_image=dict(body["NewImage"]) if "NewImage" in body else None,
            old_image=dict(body["OldImage"]) if "OldImage" in body else None,
            sequence_number=pad_seq(str(body["SequenceNumber"])),
            approximate_creation=when,
            shard_id=shard_id,
            raw=record,
        )


def _keys(body: Mapping[str, Any]) -> TypedItem:
    """The record's key, taken from an image when there is one: the images hold the key
    attributes exactly, while moto's server base64-encodes binary ``Keys`` twice (issue 11)."""
    image = body.get("NewImage") or body.get("OldImage")
    keys = dict(body["Keys"])
    if image is None or not all(name in image for name in keys):
        return keys
    return {name: image[name] for name in keys}


class ApplyFailure(Exception):
    """A sink could not apply ``records[index]``; every record before it is durably applied.

    Parameters
    ----------
    index:
        Position of the first record not applied.
    reason:
        Why, for logs and the dead-letter store.
    retryable:
        False when retrying cannot help (the record is invalid): dead-letter it at once.
    transient:
        The service behind the sink is unreachable or overloaded (not the record's fault):
        the engine rides the outage out and never dead-letters for it.
    """

    def __init__(
        self, index: int, reason: str, *, retryable: bool = True, transient: bool = False
    ) -> None:
        self.index = index
        self.reason = reason
        self.retryable = retryable
        self.transient = transient
        super().__init__(f"record {index}: {reason}")


class RecordSink(Protocol):
    """Where the consumer engine delivers records of one shard, in stream order."""

    def apply(self, records: Sequence[StreamRecord]) -> None:
        """Apply every record durably, preserving per-item order, or raise ApplyFailure."""
        ...
