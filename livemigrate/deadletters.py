"""Dead letters (rule 6): what failed, why, and the raw input exactly, in the control table.

Work continues past a dead letter. Each one is kept until it is **resolved** (a replay
succeeded, or the item is since in the destination at a newer version: see
``livemigrate.replay``) or **acknowledged** by an operator with a reason; the cutover gate
counts the others (``unresolved``). ``livemigrate dead-letters`` lists, shows, replays and
acknowledges them (``livemigrate.deadletters_cli``).

The input is kept exactly as received, as DynamoDB JSON (``livemigrate.values``): a backfill
item as its typed attributes, a stream record with its images typed; binary as base64, numbers
with their text (all 38 digits), sets as sets (a stream image's sets also in their order).
The key is kept typed too, so a replay reads the same source item.

Every process that opens a migration records the hash of its transform's module
(``record_code_version``): ``stale_processes`` names live lease holders running other code, so
a replay never races a consumer that still runs the broken transform.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from boto3.dynamodb.types import Binary

from livemigrate.control import ControlStore
from livemigrate.counters import DEAD_LETTERS_BY_ORIGIN
from livemigrate.items import to_json, to_plain, to_typed
from livemigrate.keys import CODE_PREFIX, DLQ_PREFIX, SEG_PREFIX, SPLIT_PREFIX, shard_prefix
from livemigrate.values import from_dynamodb_json, to_dynamodb_json, typed

Origin = Literal["backfill", "stream", "search", "verify", "reverse"]
# item: a source item (DynamoDB JSON); record: a stream record (images in DynamoDB JSON);
# json: anything else (search documents, letters written before inputs were kept exactly).
InputKind = Literal["item", "record", "json"]

# The dead letter itself must fit in a DynamoDB item; the raw input is compressed and, if it
# is still too large (an oversized source item), cut: the source table still holds the original.
_MAX_RAW = 300 * 1024
_IMAGES = ("Keys", "NewImage", "OldImage")
# Lease items whose holders run the forward transform (backfill segments, source consumer).
_TRANSFORM_LEASES = (SEG_PREFIX, SPLIT_PREFIX, shard_prefix("source"))


@dataclass(frozen=True)
class DeadLetter:
    """One dead letter as stored.

    ``input`` is the exact input (DynamoDB JSON text, see ``kind``); ``raw`` a readable JSON
    rendering of it for logs; ``key`` the readable source key and ``typed_key`` the exact one.
    """

    id: str
    origin: str
    reason: str
    key: str
    raw: str
    raw_truncated: bool
    at: float
    acknowledged: bool
    kind: str = "json"
    input: str = ""
    typed_key: dict[str, Any] | None = None
    resolved: str = ""
    ack_reason: str = ""
    code_hash: str = ""
    last_error: str = ""

    @property
    def unresolved(self) -> bool:
        """Still needs attention: neither resolved nor acknowledged."""
        return not self.resolved and not self.acknowledged

    @property
    def state(self) -> str:
        if self.resolved:
            return "resolved"
        return "acknowledged" if self.acknowledged else "unresolved"

    def dynamodb_json(self) -> Any:
        """The exact input as a JSON value (``dead-letters show``)."""
        return json.loads(self.input) if self.input else None

    def typed_item(self) -> dict[str, Any]:
        """A backfill letter's input as a typed item boto3 accepts (binary as bytes)."""
        return from_dynamodb_json(json.loads(self.input))

    def record(self) -> dict[str, Any]:
        """A stream letter's input as boto3's GetRecords gives a record (binary as bytes)."""
        return record_from_json(json.loads(self.input))


def record_to_json(record: Mapping[str, Any]) -> dict[str, Any]:
    """A stream record (as boto3 or a Lambda event gives it) with its images as DynamoDB JSON."""
    body = dict(record.get("dynamodb", {}))
    for name in _IMAGES:
        if name in body:
            body[name] = to_dynamodb_json(body[name])
    created = body.get("ApproximateCreationDateTime")
    if isinstance(created, datetime):  # boto3 parses it; a Lambda event has epoch seconds
        body["ApproximateCreationDateTime"] = created.timestamp()
    return {**record, "dynamodb": body}


def record_from_json(data: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of ``record_to_json``."""
    body = dict(data.get("dynamodb", {}))
    for name in _IMAGES:
        if name in body:
            body[name] = from_dynamodb_json(body[name])
    return {**data, "dynamodb": body}


def _is_record(raw: object) -> bool:
    return (
        isinstance(raw, Mapping) and "eventName" in raw and isinstance(raw.get("dynamodb"), Mapping)
    )


def encode_input(origin: str, raw: Mapping[str, Any] | str) -> tuple[InputKind, str]:
    """The exact text to keep for a dead letter's input, and its kind."""
    if isinstance(raw, str):
        return "json", raw
    if _is_record(raw):
        return "record", json.dumps(record_to_json(raw), sort_keys=True, default=str)
    if origin == "backfill":
        try:
            return "item", json.dumps(to_dynamodb_json(to_typed(raw)), sort_keys=True)
        except (TypeError, ValueError):
            pass  # not a DynamoDB item after all: keep what we can read
    return "json", to_json(raw)


def _typed_key(key: Mapping[str, Any]) -> dict[str, Any] | None:
    try:
        return {str(name): typed(value) for name, value in key.items()}
    except (TypeError, ValueError):
        return None


def _readable(kind: str, text: str) -> str:
    if kind != "item":
        return text
    try:
        return to_json(to_plain(from_dynamodb_json(json.loads(text))))
    except (TypeError, ValueError, KeyError):
        return text


class DeadLetters:
    """Write, list, resolve and acknowledge one migration's dead letters.

    Parameters
    ----------
    store:
        The migration's control store.
    code_hash:
        The hash of this process's transform module, stamped on the letters it writes.
    """

    PREFIX = DLQ_PREFIX

    def __init__(self, store: ControlStore, code_hash: str = "") -> None:
        self.store = store
        self.code_hash = code_hash

    def add(
        self, origin: Origin, reason: str, raw: Mapping[str, Any] | str, key: Mapping[str, Any]
    ) -> str:
        """Record one dead letter; returns its id."""
        kind, text = encode_input(origin, raw)
        packed = zlib.compress(text.encode())
        truncated = len(packed) > _MAX_RAW
        if truncated:
            packed = zlib.compress(text.encode()[: _MAX_RAW * 2])[:_MAX_RAW]
        typed_key = _typed_key(key)
        now = time.time()
        letter_id = f"{self.PREFIX}{now:017.6f}#{uuid.uuid4().hex[:12]}"
        self.store.put(
            letter_id,
            {
                "origin": origin,
                "reason": reason[:2000],
                "key": to_json(key if typed_key is None else to_plain(typed_key)),
                "key_typed": "" if typed_key is None else json.dumps(to_dynamodb_json(typed_key)),
                "input_kind": kind,
                "raw_z": Binary(packed),
                "raw_truncated": truncated,
                "at": str(now),
                "acknowledged": False,
                "code_hash": self.code_hash,
            },
        )
        self.store.add_metrics({DEAD_LETTERS_BY_ORIGIN[origin]: 1})
        return letter_id

    def count(self) -> int:
        return self.store.count(self.PREFIX)

    def unresolved(self) -> int:
        """How many letters neither resolved nor acknowledged (what the cutover gate counts)."""
        return sum(1 for letter in self.list() if letter.unresolved)

    def unacknowledged(self) -> int:
        """Kept for callers of the old name: the letters that still need attention, i.e.
        ``unresolved`` (a replayed or superseded letter needs no acknowledgement)."""
        return self.unresolved()

    def list(self) -> Iterator[DeadLetter]:
        for sk, item in self.store.query(self.PREFIX):
            yield _letter(sk, item)

    def get(self, letter_id: str) -> DeadLetter | None:
        """One letter by id (with or without the ``DLQ#`` prefix), or None."""
        sk = letter_id if letter_id.startswith(self.PREFIX) else self.PREFIX + letter_id
        item = self.store.get(sk)
        return None if item is None else _letter(sk, item)

    def resolve(self, letter_id: str, why: str) -> None:
        """Mark a letter resolved (a replay succeeded, or a newer version is in place)."""
        self.store.update(letter_id, {"resolved": why, "resolved_at": time.time()})

    def replay_failed(self, letter_id: str, error: str) -> None:
        """Record why the last replay did not resolve the letter."""
        self.store.update(letter_id, {"last_error": error[:2000]}, add={"replays": 1})

    def acknowledge(self, letter_id: str, reason: str, by: str) -> bool:
        """Acknowledge one letter with the operator's reason; False if there is no such letter."""
        done = self.store.update(
            letter_id,
            {"acknowledged": True, "ack_reason": reason[:2000], "acknowledged_by": by},
            condition="attribute_exists(#sk)",
        )
        return done is not None

    def acknowledge_all(self, by: str) -> int:
        n = 0
        for letter in self.list():
            if letter.unresolved:
                self.store.update(letter.id, {"acknowledged": True, "acknowledged_by": by})
                n += 1
        return n


def _letter(sk: str, item: Mapping[str, Any]) -> DeadLetter:
    text = _unpack(item.get("raw_z"))
    kind = str(item.get("input_kind", "json"))
    key_typed = str(item.get("key_typed", ""))
    return DeadLetter(
        id=sk,
        origin=str(item.get("origin", "")),
        reason=str(item.get("reason", "")),
        key=str(item.get("key", "")),
        raw=_readable(kind, text),
        raw_truncated=bool(item.get("raw_truncated", False)),
        at=float(item.get("at", 0)),
        acknowledged=bool(item.get("acknowledged", False)),
        kind=kind,
        input=text,
        typed_key=from_dynamodb_json(json.loads(key_typed)) if key_typed else None,
        resolved=str(item.get("resolved", "")),
        ack_reason=str(item.get("ack_reason", "")),
        code_hash=str(item.get("code_hash", "")),
        last_error=str(item.get("last_error", "")),
    )


def _unpack(raw_z: object) -> str:
    if not isinstance(raw_z, Binary):
        return ""
    try:
        return zlib.decompress(raw_z.value).decode()  # type: ignore[attr-defined]
    except zlib.error:
        return "<truncated>"


# -- which code the running processes use ---------------------------------------------------
def _process() -> tuple[str, int]:
    return socket.gethostname(), os.getpid()


def record_code_version(store: ControlStore, spec: str, code_hash: str) -> None:
    """Record this process's transform code (``CODE#<host>-<pid>``), once at start."""
    host, pid = _process()
    store.put(
        f"{CODE_PREFIX}{host}-{pid}",
        {"host": host, "pid": pid, "spec": spec, "code_hash": code_hash, "at": time.time()},
    )


@dataclass(frozen=True)
class StaleProcess:
    """A live lease holder whose transform code differs from ours (None: not recorded)."""

    owner: str
    lease: str
    code_hash: str | None


def stale_processes(store: ControlStore, code_hash: str, now: float) -> list[StaleProcess]:
    """Holders of live backfill or source-consumer leases that run other transform code."""
    codes = [item for _, item in store.query(CODE_PREFIX)]
    out: list[StaleProcess] = []
    for prefix in _TRANSFORM_LEASES:
        for sk, item in store.query(prefix):
            owner = item.get("lease_owner")
            if owner is None or float(item.get("lease_expires", 0)) <= now:
                continue
            held = _code_of(str(owner), codes)
            if held != code_hash:
                out.append(StaleProcess(str(owner), sk, held))
    return out


def _code_of(owner: str, codes: list[dict[str, Any]]) -> str | None:
    # Consumers name their leases "<host>-<pid>-<rand>", backfill workers "<host>:<pid>:<rand>-i".
    for code in codes:
        host, pid = code.get("host"), code.get("pid")
        if owner.startswith((f"{host}-{pid}-", f"{host}:{pid}:")):
            return str(code.get("code_hash"))
    return None
