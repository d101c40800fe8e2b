"""A pure batching policy: when to flush a bulk request (by count, by bytes, by age).

It holds no items and does no I/O: the caller adds sizes and asks ``should_flush(now)``, so
the policy is tested without a clock or a network (CONVENTIONS.md: policies are small frozen
dataclasses with a pure decision method that takes ``now``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class BatchPolicy:
    """Flush when any limit is reached.

    Parameters
    ----------
    max_count:
        Documents per bulk request.
    max_bytes:
        Approximate request body bytes (Elasticsearch's default ``http.max_content_length`` is
        100 MB; a few MB per request is the usual sweet spot).
    max_age:
        Seconds since the first item of the batch was added.
    """

    max_count: int = 500
    max_bytes: int = 5 * 1024 * 1024
    max_age: float = 1.0

    def __post_init__(self) -> None:
        if self.max_count < 1 or self.max_bytes < 1 or self.max_age < 0:
            raise ValueError("batch limits must be positive")

    def should_flush(self, count: int, size: int, started_at: float | None, now: float) -> bool:
        """Whether a batch of ``count`` items, ``size`` bytes, begun at ``started_at``, is due."""
        if count == 0:
            return False
        if count >= self.max_count or size >= self.max_bytes:
            return True
        return started_at is not None and now - started_at >= self.max_age


def chunks(sized: Iterable[tuple[T, int]], policy: BatchPolicy) -> Iterator[list[T]]:
    """Group a stream of ``(item, size)`` into lists that respect the count and byte limits:
    the one chunker every bulk path feeds (sink and resync). An item larger than ``max_bytes``
    goes alone in its batch (never dropped)."""
    batch: list[T] = []
    size = 0
    for item, item_size in sized:
        if batch and (len(batch) >= policy.max_count or size + item_size > policy.max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += item_size
    if batch:
        yield batch
