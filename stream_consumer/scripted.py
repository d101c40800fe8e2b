"""An in-memory stream that splits shards: what moto cannot do, for tests of lineage and leases.

``ScriptedStream`` holds shards with hash-key ranges. A write lands in the open shard whose range
holds the key's hash, so after a split a key's later events are in a child of the shard that holds
its earlier ones (as in DynamoDB Streams). Shards can be split (parent closed, two children),
merged into a child with several parents, trimmed from the listing (past retention), and faults
can be injected (expired iterators, throttling). ``ScriptedTable`` is the source table on top of
it: put/delete produce INSERT/MODIFY/REMOVE records with NEW_AND_OLD_IMAGES.

Each shard numbers its records itself, as DynamoDB Streams does: numbers grow within a shard
and from a parent to its children (so one item's records stay ordered), but records of two
shards are NOT ordered by time; which shard's numbers are higher is arbitrary (``seq_offsets``
lets a test choose). Shard ``j``'s numbers are ``j`` modulo ``SEQ_STRIDE``, so they are unique.

It is a ``ShardSource`` (see ``stream_consumer.source``) and is used *in addition to* moto.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from livemigrate.clock import Clock, SystemClock
from livemigrate.items import TypedItem, key_id
from livemigrate.versioning import pad_seq
from stream_consumer.source import (
    DataTrimmed,
    IteratorExpired,
    Page,
    ShardGone,
    ShardInfo,
    Throttled,
)

_SPACE = 1 << 32
SEQ_BASE = 10**20
SEQ_STRIDE = 1000  # the number of a shard's next record grows by this much


@dataclass
class _Shard:
    shard_id: str
    parents: tuple[str, ...]
    lo: int
    hi: int
    records: list[dict[str, Any]] = field(default_factory=list)
    closed: bool = False
    trimmed_before: int = 0  # records at positions below this are past retention
    next_seq: int = SEQ_BASE


def _hash(keys: Mapping[str, Any]) -> int:
    return int.from_bytes(hashlib.sha256(key_id(keys).encode()).digest()[:4], "big")


class ScriptedStream:
    """A thread-safe in-memory stream; implements ``ShardSource``.

    Parameters
    ----------
    clock:
        Stamps ``ApproximateCreationDateTime``.
    shards:
        How many open shards to start with (hash space cut evenly).
    seq_offsets:
        Per initial shard, how many records' worth of numbers it starts above the others
        (default 0 each: the n-th record of every shard gets about the same number).
    """

    def __init__(
        self,
        clock: Clock | None = None,
        shards: int = 1,
        arn: str = "",
        seq_offsets: Sequence[int] | None = None,
    ) -> None:
        self.clock = clock or SystemClock()
        self._arn = arn or "arn:aws:dynamodb:scripted:000000000000:table/scripted/stream/1"
        self._lock = threading.Lock()
        self._shards: dict[str, _Shard] = {}
        self._listed: set[str] = set()
        self._epoch = 0
        self._faults: list[str] = []
        self.calls = {"describe": 0, "get_records": 0}
        offsets = list(seq_offsets or [0] * shards)
        step = _SPACE // shards
        for i in range(shards):
            hi = _SPACE if i == shards - 1 else (i + 1) * step
            self._new_shard((), i * step, hi, SEQ_BASE + offsets[i] * SEQ_STRIDE)

    # -- scripting ------------------------------------------------------------------------
    def _new_shard(self, parents: tuple[str, ...], lo: int, hi: int, floor: int = 0) -> str:
        """A shard numbering from above ``floor`` and above every parent's numbers."""
        number = len(self._shards)
        if number >= SEQ_STRIDE:
            raise ValueError(f"a scripted stream holds at most {SEQ_STRIDE} shards")
        floor = max([floor, *(self._shards[p].next_seq for p in parents)])
        first = -(-floor // SEQ_STRIDE) * SEQ_STRIDE + number
        shard_id = f"shardId-{number:05d}-{lo:08x}"
        self._shards[shard_id] = _Shard(shard_id, parents, lo, hi, next_seq=first)
        self._listed.add(shard_id)
        return shard_id

    def open_shards(self) -> list[str]:
        with self._lock:
            return [s.shard_id for s in self._shards.values() if not s.closed]

    def split(self, shard_id: str) -> tuple[str, str]:
        """Close ``shard_id`` and open two children that share its hash range."""
        with self._lock:
            parent = self._shards[shard_id]
            if parent.closed:
                raise ValueError(f"{shard_id} is already closed")
            parent.closed = True
            mid = (parent.lo + parent.hi) // 2
            return (
                self._new_shard((shard_id,), parent.lo, mid),
                self._new_shard((shard_id,), mid, parent.hi),
            )

    def merge(self, first: str, second: str) -> str:
        """Close two adjacent open shards and open one child with both as parents."""
        with self._lock:
            a, b = self._shards[first], self._shards[second]
            if a.closed or b.closed or a.hi != b.lo:
                raise ValueError("merge needs two adjacent open shards")
            a.closed = b.closed = True
            return self._new_shard((first, second), a.lo, b.hi)

    def trim(self, shard_id: str) -> None:
        """Drop a shard from the listing, as retention does 24 h after it closed."""
        with self._lock:
            self._listed.discard(shard_id)

    def trim_records(self, shard_id: str, count: int) -> None:
        """Make the first ``count`` records of a shard unreadable (past retention)."""
        with self._lock:
            self._shards[shard_id].trimmed_before = count

    def inject(self, *faults: str) -> None:
        """Make the next GetRecords calls fail: "expired", "throttled" or "error", in order."""
        with self._lock:
            self._faults.extend(faults)

    def expire_iterators(self) -> None:
        with self._lock:
            self._epoch += 1

    def emit(
        self,
        event_name: str,
        keys: TypedItem,
        new_image: TypedItem | None,
        old_image: TypedItem | None,
    ) -> str:
        """Append one record to the open shard that owns the key; returns its sequence number."""
        with self._lock:
            shard = self._open_shard_of(keys)
            seq = str(shard.next_seq)
            shard.next_seq += SEQ_STRIDE
            body: dict[str, Any] = {
                "Keys": dict(keys),
                "SequenceNumber": seq,
                "ApproximateCreationDateTime": self.clock.now(),
                "StreamViewType": "NEW_AND_OLD_IMAGES",
            }
            if new_image is not None:
                body["NewImage"] = dict(new_image)
            if old_image is not None:
                body["OldImage"] = dict(old_image)
            shard.records.append({"eventName": event_name, "dynamodb": body})
            return seq

    def _open_shard_of(self, keys: Mapping[str, Any]) -> _Shard:
        h = _hash(keys)
        return next(s for s in self._shards.values() if not s.closed and s.lo <= h < s.hi)

    def shard_for(self, keys: Mapping[str, Any]) -> str:
        """The open shard that a write of ``keys`` goes to now."""
        with self._lock:
            return self._open_shard_of(keys).shard_id

    def shard_of(self, seq: str) -> str:
        with self._lock:
            for shard in self._shards.values():
                if any(r["dynamodb"]["SequenceNumber"] == seq for r in shard.records):
                    return shard.shard_id
        raise KeyError(seq)

    def parents_of(self, shard_id: str) -> tuple[str, ...]:
        return self._shards[shard_id].parents

    # -- ShardSource ------------------------------------------------------------------------
    @property
    def stream_arn(self) -> str:
        return self._arn

    def list_shards(self) -> list[ShardInfo]:
        with self._lock:
            self.calls["describe"] += 1
            return [
                ShardInfo(s.shard_id, s.parents, s.closed)
                for s in self._shards.values()
                if s.shard_id in self._listed
            ]

    def iterator(self, shard_id: str, after: str | None) -> str:
        with self._lock:
            shard = self._shards.get(shard_id)
            if shard is None or shard_id not in self._listed:
                raise ShardGone(shard_id)
            pos = 0
            if after is not None:
                pos = sum(
                    1 for r in shard.records if pad_seq(r["dynamodb"]["SequenceNumber"]) <= after
                )
            if pos < shard.trimmed_before:
                if after is not None:
                    raise DataTrimmed(f"{shard_id}: position {after} is past retention")
                pos = shard.trimmed_before
            return f"{shard_id}|{pos}|{self._epoch}"

    def get_records(self, iterator: str, limit: int) -> Page:
        with self._lock:
            self.calls["get_records"] += 1
            if self._faults:
                fault = self._faults.pop(0)
                if fault == "expired":
                    raise IteratorExpired(iterator)
                if fault == "error":
                    error = {"Error": {"Code": "InternalServerError", "Message": "scripted"}}
                    raise ClientError(error, "GetRecords")  # type: ignore[arg-type]
                raise Throttled(iterator)
            shard_id, pos_text, epoch = iterator.split("|")
            if int(epoch) != self._epoch:
                raise IteratorExpired(iterator)
            shard = self._shards[shard_id]
            pos = int(pos_text)
            if pos < shard.trimmed_before:
                raise DataTrimmed(iterator)
            records = shard.records[pos : pos + limit]
            end = pos + len(records)
            done = shard.closed and end >= len(shard.records)
            return Page(
                records=[dict(r) for r in records],
                next_iterator=None if done else f"{shard_id}|{end}|{self._epoch}",
            )


class ScriptedTable:
    """A source table whose writes go to a ``ScriptedStream`` (NEW_AND_OLD_IMAGES)."""

    def __init__(self, stream: ScriptedStream, key_names: tuple[str, ...] = ("pk", "sk")) -> None:
        self.stream = stream
        self.key_names = key_names
        self.items: dict[str, TypedItem] = {}
        self._lock = threading.Lock()

    def put(self, item: TypedItem) -> str:
        keys = {k: item[k] for k in self.key_names}
        with self._lock:
            old = self.items.get(key_id(keys))
            self.items[key_id(keys)] = dict(item)
            return self.stream.emit("MODIFY" if old else "INSERT", keys, dict(item), old)

    def delete(self, keys: TypedItem) -> str | None:
        with self._lock:
            old = self.items.pop(key_id(keys), None)
            if old is None:
                return None
            return self.stream.emit("REMOVE", dict(keys), None, old)

    def get(self, keys: Mapping[str, Any]) -> TypedItem | None:
        """The item now (a ``SourceReader``: what a consistent GetItem returns)."""
        with self._lock:
            held = self.items.get(key_id({k: keys[k] for k in self.key_names}))
            return None if held is None else dict(held)

    def scan(self) -> list[TypedItem]:
        with self._lock:
            return [dict(i) for i in self.items.values()]
