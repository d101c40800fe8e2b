"""The consumer's watermark: a time before which no record can still arrive (rule 15).

A source that delivers out of order and more than once (a Kinesis streaming destination) can
hand over a delete and then, later, an older put of the same item. The destination keeps the
delete as a tombstone (its version beats the late put) until the watermark proves that no
older record of that item can still arrive; only then is the tombstone purged.

Each shard item records ``caught_up_at``: when a GetRecords that found the shard at its end was
sent, every record before it applied and checkpointed (``stream_consumer.engine``). A record
created at ``t`` is in its shard by ``t + delivery_margin`` (the destination's delivery delay,
skew included). So once every unfinished shard is caught up at or after ``T``, every record
created before ``T - delivery_margin`` has been applied::

    watermark = min(caught_up_at of every unfinished shard) - delivery_margin

A shard never yet caught up (or a consumer with no shards) gives no watermark: nothing is
purged. Finished shards (closed and read to their end) no longer hold anything back. The
cutover's drain asks for the watermark to pass the fence time plus the margin: then every change
made before the fence is applied (``drained_past``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from livemigrate import keys
from livemigrate.control import ControlStore
from livemigrate.watermark import watermark_of
from stream_consumer.kinesis.records import version_floor
from stream_consumer.tombstones import tombstones

if TYPE_CHECKING:
    from livemigrate.destination import DestinationWriter

log = logging.getLogger("livemigrate.consumer.watermark")

# How long after a change is made its record is surely in the Kinesis stream, by default:
# the streaming destination's delivery (usually under a second) with its retries, and clock
# skew between DynamoDB and the consumer's machine. The setting is kinesis_delivery_margin.
DELIVERY_MARGIN = 60.0


def watermark(store: ControlStore, consumer: str, margin: float) -> float | None:
    """The watermark of ``consumer`` (all its processes' shards) as the control table says."""
    prefix = keys.shard_prefix(consumer)
    return watermark_of({sk: item for sk, item in store.query(prefix)}, margin)


def drained_past(store: ControlStore, consumer: str, moment: float, margin: float) -> bool:
    """Whether every change made before ``moment`` is applied (the cutover's drain)."""
    mark = watermark(store, consumer, margin)
    return mark is not None and mark >= moment


def purge_below(writer: DestinationWriter, mark: float) -> tuple[int, int]:
    """Delete the tombstones of changes made before ``mark``: (purged, kept).

    A tombstone at or above the floor stays: an older put of its item may still arrive. The
    delete is conditioned on the tombstone's version, so one that a newer write replaced in the
    meantime is left alone.
    """
    floor = "9" * 40 if mark == float("inf") else version_floor(mark)
    purged = kept = 0
    for key, seq in tombstones(writer):
        if seq < floor and writer.purge_tombstone(key, seq):
            purged += 1
        else:
            kept += 1
    return purged, kept
