"""The record format of a table's Kinesis streaming destination, and its version rule.

Each Kinesis record's data is JSON::

    {"eventName": "INSERT" | "MODIFY" | "REMOVE", "userIdentity": {...} (TTL deletes),
     "tableName": "...", "recordFormat": "application/json",
     "dynamodb": {"ApproximateCreationDateTime": 1733100000123456,
                  "ApproximateCreationDateTimePrecision": "MICROSECOND",
                  "Keys": {...}, "NewImage": {...}, "OldImage": {...}, "SizeBytes": 42}}

There is no DynamoDB sequence number, and AWS documents that these records may arrive out of
order and more than once: consumers order and deduplicate by ``ApproximateCreationDateTime``.

Version rule (ARCHITECTURE.md rule 15)
--------------------------------------
The version of a record is 40 digits, so it orders as text exactly like the padded DynamoDB
Streams sequence numbers (``livemigrate.versioning``) and always beats the backfill's
``BACKFILL_SEQ``:

- 20 digits: ``ApproximateCreationDateTime`` in microseconds since the epoch;
- 1 digit: the event's rank, INSERT 0 < MODIFY 1 < REMOVE 2;
- 19 digits: a digest of the change's content (event name, keys, new and old images in the
  canonical form of ``livemigrate.values``), modulo 10^19.

Two deliveries of one change carry the same content, so they get the same version: the
second is not newer, a no-op. Two *different* changes of one item stamped with the same
microsecond are told apart by the last 20 digits:

- the rank first, because within one lifetime of an item an INSERT precedes any MODIFY and a
  REMOVE follows every MODIFY: those pairs are ordered correctly, and a delete is never undone
  by a put of the same microsecond of the same lifetime;
- then the digest: an arbitrary but deterministic order. Every consumer, every replay and every
  arrival order picks the same winner (the result does not depend on delivery order), but it may
  not be the change the table made last. That needs two different changes of one item inside
  one microsecond (or a REMOVE and a re-INSERT within one); ``livemigrate verify`` finds such an
  item and ``verify --repair`` rewrites it from the source.

Not used as a tie-breaker, on purpose: the Kinesis sequence number. It orders records within
one shard only (after resharding, records of one item are on a parent and on a child shard),
and a duplicate is a second PutRecord with a new, higher sequence number, so a duplicate of the
older change would beat the newer one: duplicates would no longer be no-ops.

MILLISECOND precision (the default of a streaming destination, and what a record without a
precision field has) is refused with ``PrecisionRefused``: at millisecond precision two changes
of a busy item often share a stamp, and the digest order would pick a winner where DynamoDB
had an order.

The Kinesis sequence number is the record's *position* (``StreamRecord.position``, padded to
``POSITION_WIDTH`` digits): the engine checkpoints and resumes by it within one shard.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Final

from livemigrate.errors import LivemigrateError
from livemigrate.records import StreamRecord
from livemigrate.values import canonical_item, from_dynamodb_json, to_dynamodb_json

MICROSECOND: Final = "MICROSECOND"
TIME_WIDTH: Final = 20
DIGEST_WIDTH: Final = 19
# Kinesis sequence numbers are decimal, up to 129 digits (the API's pattern 0|[1-9]\d{0,128}).
POSITION_WIDTH: Final = 129
RANK: Final = {"INSERT": 0, "MODIFY": 1, "REMOVE": 2}
PRECISION_FIX: Final = (
    "switch the table's Kinesis streaming destination to microsecond precision: "
    "aws dynamodb update-kinesis-streaming-destination --table-name <table> "
    "--stream-arn <stream arn> --update-kinesis-streaming-configuration "
    "ApproximateCreationDateTimePrecision=MICROSECOND (UpdateKinesisStreamingDestination); "
    "records written before the switch keep millisecond stamps: start the migration after it"
)


class PrecisionRefused(LivemigrateError):
    """A Kinesis record's creation time is not in microseconds (see the module docstring)."""


class NotAChangeRecord(ValueError):
    """The Kinesis record's data is not a DynamoDB change record."""


def pad_position(kinesis_sequence: str) -> str:
    """A Kinesis sequence number in its ordered string form (within one shard)."""
    if not kinesis_sequence.isdigit() or len(kinesis_sequence) > POSITION_WIDTH:
        raise ValueError(f"not a Kinesis sequence number: {kinesis_sequence!r}")
    return kinesis_sequence.zfill(POSITION_WIDTH)


def version_of(micros: int, event_name: str, body: Mapping[str, Any]) -> str:
    """The 40-digit version of a change made at ``micros`` (see the module docstring).

    ``body`` is the record's ``dynamodb`` part with typed images (boto3 form).
    """
    if not 0 <= micros < 10**TIME_WIDTH:
        raise ValueError(f"creation time out of range: {micros}")
    digest = content_digest(event_name, body)
    return f"{micros:0{TIME_WIDTH}d}{RANK[event_name]}{digest:0{DIGEST_WIDTH}d}"


def content_digest(event_name: str, body: Mapping[str, Any]) -> int:
    """A number for the change's content: equal for two deliveries of one change."""
    content = {
        "e": event_name,
        "k": canonical_item(body.get("Keys") or {}),
        "n": None if body.get("NewImage") is None else canonical_item(body["NewImage"]),
        "o": None if body.get("OldImage") is None else canonical_item(body["OldImage"]),
    }
    text = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") % 10**DIGEST_WIDTH


def micros_of(version: str) -> int:
    """The creation time (microseconds) a Kinesis version carries."""
    return int(version[:TIME_WIDTH])


def version_floor(epoch_seconds: float) -> str:
    """The smallest version of a change made at ``epoch_seconds`` or later: every version
    below it belongs to a change made earlier (tombstones are purged below a watermark)."""
    return f"{max(0, int(epoch_seconds * 1_000_000)):0{TIME_WIDTH}d}" + "0" * (DIGEST_WIDTH + 1)


def decode(data: bytes | str | Mapping[str, Any]) -> dict[str, Any]:
    """The record's JSON (as bytes from GetRecords, or already decoded)."""
    if isinstance(data, Mapping):
        return dict(data)
    try:
        payload = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NotAChangeRecord(f"Kinesis record data is not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise NotAChangeRecord("Kinesis record data is not a JSON object")
    return payload


def parse_kinesis_record(
    data: bytes | str | Mapping[str, Any],
    *,
    sequence_number: str,
    shard_id: str = "",
) -> StreamRecord:
    """One Kinesis record of a streaming destination as a ``StreamRecord``.

    Parameters
    ----------
    data:
        The record's data: the JSON text (bytes, as GetRecords or the KCL give it) or the
        decoded object.
    sequence_number:
        The Kinesis sequence number of the record (its position in ``shard_id``).
    shard_id:
        The Kinesis shard it was read from.

    Returns
    -------
    StreamRecord
        ``sequence_number`` is the version (module docstring), ``position`` the padded Kinesis
        sequence number, ``approximate_creation`` epoch seconds, ``raw`` the decoded JSON with
        ``kinesis: {sequenceNumber, shardId}`` added (for dead letters).

    Raises
    ------
    PrecisionRefused
        The record's creation time is not at MICROSECOND precision.
    NotAChangeRecord
        The data is not a DynamoDB change record.
    """
    payload = decode(data)
    name = payload.get("eventName")
    body = payload.get("dynamodb")
    if name not in RANK or not isinstance(body, Mapping) or "Keys" not in body:
        raise NotAChangeRecord(f"not a DynamoDB change record (eventName {name!r})")
    precision = body.get("ApproximateCreationDateTimePrecision", "MILLISECOND")
    if precision != MICROSECOND:
        raise PrecisionRefused(
            f"a Kinesis record of table {payload.get('tableName', '?')!r} carries "
            f"{precision} precision: versions need microseconds (two changes of one item in "
            "one millisecond could not be ordered)",
            PRECISION_FIX,
        )
    typed = {
        part: from_dynamodb_json(body[part])
        for part in ("Keys", "NewImage", "OldImage")
        if body.get(part) is not None
    }
    micros = int(body["ApproximateCreationDateTime"])
    raw = {**payload, "kinesis": {"sequenceNumber": sequence_number, "shardId": shard_id}}
    return StreamRecord(
        event_name=name,
        keys=_keys(typed),
        new_image=typed.get("NewImage"),
        old_image=typed.get("OldImage"),
        sequence_number=version_of(micros, name, typed),
        approximate_creation=micros / 1_000_000,
        shard_id=shard_id,
        raw=raw,
        position=pad_position(sequence_number),
    )


def _keys(typed: Mapping[str, Any]) -> dict[str, Any]:
    keys = dict(typed["Keys"])
    image = typed.get("NewImage") or typed.get("OldImage")
    if image is None or not all(name in image for name in keys):
        return keys
    return {name: image[name] for name in keys}


def change_record(
    event_name: str,
    keys: Mapping[str, Any],
    new_image: Mapping[str, Any] | None,
    old_image: Mapping[str, Any] | None,
    micros: int,
    *,
    table_name: str,
    precision: str = MICROSECOND,
    user_identity: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON object a streaming destination writes for one change (images in DynamoDB JSON,
    binary as base64): what the bridge puts, and what tests build records from."""
    body: dict[str, Any] = {
        "ApproximateCreationDateTime": micros,
        "ApproximateCreationDateTimePrecision": precision,
        "Keys": to_dynamodb_json(keys),
        "SizeBytes": 0,
    }
    if new_image is not None:
        body["NewImage"] = to_dynamodb_json(new_image)
    if old_image is not None:
        body["OldImage"] = to_dynamodb_json(old_image)
    body["SizeBytes"] = len(json.dumps(body, default=str))
    record: dict[str, Any] = {
        "awsRegion": "us-east-1",
        "eventID": hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:36],
        "eventName": event_name,
        "tableName": table_name,
        "recordFormat": "application/json",
        "eventSource": "aws:dynamodb",
        "dynamodb": body,
    }
    if user_identity is not None:
        record["userIdentity"] = dict(user_identity)
    return record
