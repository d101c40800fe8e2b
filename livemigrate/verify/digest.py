"""Order-independent digests of item sets, split into buckets by a hash of the key.

Two tables hold the same items exactly when, for every bucket, the sum (mod 2^64) of the
items' hashes and the item count agree. A sum, unlike XOR, does not cancel two equal items, so
a duplicated output of the transform is still seen. Everything here is pure: the scans that
feed it live in ``livemigrate.verify.engine``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from livemigrate.values import canonical_bytes, key_text
from livemigrate.versioning import DELETE_ATTR, TOMBSTONE_ATTR

MASK = (1 << 64) - 1
MAX_BUCKETS = 1 << 16


def is_tombstone(item: Mapping[str, Any] | None) -> bool:
    """A destination item that records a delete (a tombstone, or marked for the consumer's
    delete): verification treats it as absent."""
    if not item:
        return False
    return any(item.get(name, {}).get("BOOL", False) for name in (TOMBSTONE_ATTR, DELETE_ATTR))


def item_hash(item: Mapping[str, Any]) -> int:
    """64-bit hash of an item's canonical form."""
    return int.from_bytes(hashlib.blake2b(canonical_bytes(item), digest_size=8).digest(), "big")


def key_id(item: Mapping[str, Any], key_names: Sequence[str]) -> str:
    """The canonical id of an item's key (``livemigrate.items.key_id``)."""
    return key_text({name: item[name] for name in key_names})


def bucket_of(kid: str, buckets: int) -> int:
    """The bucket of a key id: a hash of the destination key, so both sides agree."""
    digest = hashlib.blake2b(kid.encode(), digest_size=8, person=b"lm-bucket").digest()
    return int.from_bytes(digest, "big") % buckets


def choose_buckets(item_count: int, per_bucket: int = 1000) -> int:
    """Enough buckets that one bucket's items fit comfortably in memory."""
    wanted = math.ceil(max(item_count, 1) / per_bucket)
    return max(1, min(MAX_BUCKETS, wanted))


@dataclass
class Digests:
    """Per-bucket (sum of hashes mod 2^64, count) of one side."""

    buckets: int
    sums: list[int] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.sums:
            self.sums = [0] * self.buckets
            self.counts = [0] * self.buckets

    def add(self, bucket: int, hashed: int) -> None:
        self.sums[bucket] = (self.sums[bucket] + hashed) & MASK
        self.counts[bucket] += 1

    def merge(self, other: Digests) -> None:
        for b in range(self.buckets):
            self.sums[b] = (self.sums[b] + other.sums[b]) & MASK
            self.counts[b] += other.counts[b]

    @property
    def total(self) -> int:
        return sum(self.counts)

    def differing(self, other: Digests) -> list[int]:
        """Buckets whose contents differ between the two sides."""
        return [
            b
            for b in range(self.buckets)
            if self.sums[b] != other.sums[b] or self.counts[b] != other.counts[b]
        ]


def batches(buckets: Iterable[int], sizes: Sequence[int], limit: int) -> list[list[int]]:
    """Group buckets so each group holds at most ``limit`` items (a bucket alone may exceed it).

    ``sizes[b]`` is the larger side's item count of bucket ``b``.
    """
    out: list[list[int]] = []
    current: list[int] = []
    held = 0
    for b in buckets:
        if current and held + sizes[b] > limit:
            out.append(current)
            current, held = [], 0
        current.append(b)
        held += sizes[b]
    if current:
        out.append(current)
    return out
