"""Tombstone finalisation (issue item 10, rule 2): purge tombstones once deletes are real.

With a Kinesis change source (rule 15) deletes stay tombstones after the switch, and the purge
takes only those below the consumer's watermark (``stream_consumer.watermark``); the running
consumer sweeps again periodically (``sweep``).

While the backfill runs, a delete leaves a tombstone in D so that a late bulk put of the deleted
item fails its put-if-absent. Once the backfill is complete the source consumer switches to real
deletes and records ``real_deletes_since`` on ``CONSUMER#source`` (finalisation records it
itself when the backfill is complete and quiet and no consumer did). Finalisation waits for that
(plus a settle time that covers other consumer processes' cached delete mode), scans D for
``_lm_tomb = true`` and deletes each tombstone with a condition on its sequence number, so a
tombstone that a newer write replaced is left alone. It ends by writing ``TOMBSTONES``
{state: "purged", purged_at, purged_count}.

A tombstone write must land before the purge scan starts, even when it is retried for a long
time (botocore retries, throttling): each "tombstones" decision of a consumer is checked at a
monotonic moment ``c`` (before the plan is read), and the purge starts no earlier than the
switch to real deletes (recorded after ``c``) plus ``settle_seconds``. So a tombstone decided
on check ``c`` is written only before ``c + settle - margin``: the batch runs inside a
``TombstoneWindow`` fence and a write attempt after that raises ``TombstoneWindowClosed`` (the
engine applies the batch again with a fresh decision). The cutover gate does not trust the
``purged`` state alone either: it also wants a verification, started after the purge, that saw
no tombstone in the destination (``livemigrate.gates.tombstones_gate``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from livemigrate import keys
from livemigrate.clock import Clock
from livemigrate.errors import LivemigrateError
from livemigrate.fencing import Fence, WindowClosed
from livemigrate.items import TypedItem
from livemigrate.keys import TOMBSTONES
from livemigrate.outage import Outage, is_transient
from livemigrate.versioning import SEQ_ATTR, TOMBSTONE_ATTR

if TYPE_CHECKING:
    from livemigrate.control import ControlStore
    from livemigrate.destination import DestinationWriter
    from livemigrate.migration import Migration

log = logging.getLogger("livemigrate.consumer.tombstones")

# How long finalisation waits after the switch to real deletes; consumers write a tombstone
# only within this time (less a margin) of the check that allowed it.
SETTLE_SECONDS = 15.0


class NotSwitched(LivemigrateError):
    """The consumer has not switched to real deletes within the wait."""


class TombstoneWindowClosed(WindowClosed):
    """A tombstone decision is too old to be written safely (the purge may have started)."""


class TombstoneWindow(Fence):
    """The fence of a batch decided as "tombstones": it holds while ``within`` (the shard's
    lease fence, if any) holds and until ``deadline``, after which a write attempt raises
    ``TombstoneWindowClosed`` (the shard's own expiry still raises ``LeaseExpired``)."""

    def __init__(self, clock: Clock, deadline: float, within: Fence | None) -> None:
        super().__init__(clock, deadline, "tombstone decision")
        self.within = within

    def check(self) -> None:
        if self.within is not None:
            self.within.check()
        left = self.remaining()
        if left <= 0:
            raise TombstoneWindowClosed(
                f"a tombstone decision expired {-left:.3f}s ago (the purge may have started)"
            )


def tombstones(writer: DestinationWriter) -> Iterator[tuple[TypedItem, str]]:
    """(key, sequence number) of every tombstone in the destination (paged scan)."""
    names = {f"#k{i}": n for i, n in enumerate(writer.key_names)}
    names.update({"#seq": SEQ_ATTR, "#tomb": TOMBSTONE_ATTR})
    kwargs: dict[str, Any] = {
        "TableName": writer.table,
        "FilterExpression": "#tomb = :true",
        "ProjectionExpression": ", ".join([*names.keys()]),
        "ExpressionAttributeNames": names,
        "ExpressionAttributeValues": {":true": {"BOOL": True}},
        "ConsistentRead": True,
    }
    while True:
        page = writer.client.scan(**kwargs)
        for item in page.get("Items", []):
            yield writer.key(item), str(item[SEQ_ATTR]["S"])
        if "LastEvaluatedKey" not in page:
            return
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def purge_for(migration: Migration, consumer: str = "source") -> tuple[int, int]:
    """The purge the migration's change source allows: every tombstone (DynamoDB Streams,
    in order), or those below the consumer's watermark (Kinesis: out of order, rule 15)."""
    if migration.settings.change_source != "kinesis":
        return purge(migration.writer)
    from stream_consumer.watermark import purge_below, watermark

    margin = migration.settings.kinesis_delivery_margin
    mark = watermark(migration.store, consumer, margin)
    if mark is None:
        log.info("no watermark yet (a shard was never read to its end): no tombstone purged")
        return 0, 0
    return purge_below(migration.writer, mark)


def purge(writer: DestinationWriter) -> tuple[int, int]:
    """Delete every tombstone not replaced by a newer write: (purged, left alone)."""
    purged = kept = 0
    for key, seq in tombstones(writer):
        if writer.purge_tombstone(key, seq):
            purged += 1
        else:
            kept += 1
    return purged, kept


@dataclass(frozen=True)
class FinalizeOptions:
    """How tombstone finalisation waits for the switch to real deletes, and rides out outages.

    Parameters
    ----------
    consumer:
        The consumer whose switch (``CONSUMER#<consumer>.real_deletes_since``) is waited for.
    settle_seconds:
        How long after the switch the purge starts (a tombstone in flight lands first).
    timeout_seconds:
        Give up (``NotSwitched``) if the switch has not happened by then.
    poll_seconds:
        How often the switch is looked for.
    outage_seconds:
        An endpoint outage longer than this raises ``ServiceUnreachable``.
    """

    consumer: str = "source"
    settle_seconds: float = SETTLE_SECONDS
    timeout_seconds: float = 3600.0
    poll_seconds: float = 2.0
    outage_seconds: float = 300.0


def wait_for_real_deletes(
    migration: Migration,
    clock: Clock,
    options: FinalizeOptions = FinalizeOptions(),
    stop: threading.Event | None = None,
) -> float:
    """Block until ``CONSUMER#<consumer>.real_deletes_since`` is older than ``settle_seconds``.

    No consumer need be running: once the backfill is complete and quiet, the switch is
    recorded here if no consumer did (a consumer stopped before the backfill went quiet never
    would). That is as safe as a consumer's own switch: a consumer's "tombstones" decision
    came from a check made before the backfill completed, so before this record, and it
    writes only within ``settle_seconds`` less a margin of that check.
    """
    consumer, settle_seconds = options.consumer, options.settle_seconds
    timeout_seconds = options.timeout_seconds
    stop = stop or threading.Event()
    deadline = clock.now() + timeout_seconds
    while not stop.is_set():
        since = switched_at(migration.store, consumer)
        if since is None and migration.backfill_complete():
            since = record_switch(migration.store, consumer, clock.now())
        if since is not None and clock.now() >= since + settle_seconds:
            return since
        if clock.now() >= deadline:
            raise NotSwitched(
                f"the {consumer} consumer has not switched to real deletes "
                f"within {timeout_seconds:.0f}s (backfill complete: "
                f"{migration.backfill_complete()})",
                "finish the backfill (`livemigrate status` shows it), then run "
                "`livemigrate consume --finalize-tombstones` again",
            )
        clock.sleep(options.poll_seconds)
    raise NotSwitched("stopped while waiting for real deletes", "run it again")


def switched_at(store: ControlStore, consumer: str) -> float | None:
    """When the consumer switched to real deletes (``real_deletes_since``), if it has."""
    since = (store.get(keys.consumer(consumer)) or {}).get("real_deletes_since")
    return None if since is None else float(since)


def record_switch(store: ControlStore, consumer: str, now: float) -> float:
    """Record the switch to real deletes at ``now`` unless one is recorded; returns the
    recorded time (the first writer's)."""
    store.update(
        keys.consumer(consumer),
        {"real_deletes_since": now},
        condition="attribute_not_exists(#real_deletes_since)",
    )
    since = switched_at(store, consumer)
    return now if since is None else since


def finalize_tombstones(
    migration: Migration,
    clock: Clock,
    options: FinalizeOptions = FinalizeOptions(),
    stop: threading.Event | None = None,
) -> int:
    """Wait for real deletes, purge tombstones, record ``TOMBSTONES``; returns how many purged.

    An endpoint outage (``livemigrate.outage``) is ridden out: wait and purge again (the purge
    is idempotent); ``ServiceUnreachable`` once it lasts longer than ``options.outage_seconds``.
    """
    outage = Outage("tombstone finalisation: DynamoDB", clock, options.outage_seconds)
    while True:
        try:
            purged = _finalize(migration, clock, options, stop)
        except (ClientError, BotoCoreError) as exc:
            if not is_transient(exc):
                raise
            clock.sleep(outage.failed(exc))
            continue
        outage.recovered()
        return purged


def _finalize(
    migration: Migration, clock: Clock, options: FinalizeOptions, stop: threading.Event | None
) -> int:
    wait_for_real_deletes(migration, clock, options, stop)
    purged, kept = purge_for(migration, options.consumer)
    migration.store.put(
        TOMBSTONES,
        {"state": "purged", "purged_at": clock.now(), "purged_count": purged},
    )
    log.info("tombstones purged: %d (left %d replaced by newer writes)", purged, kept)
    return purged


def tombstones_purged(migration: Migration) -> bool:
    held = migration.store.get(TOMBSTONES) or {}
    return held.get("state") == "purged"


def sweep(
    migration: Migration,
    *,
    consumer: str = "source",
    interval: float = 30.0,
    stop: threading.Event | None = None,
) -> None:
    """Purge tombstones below the watermark every ``interval`` seconds until ``stop`` (Kinesis:
    deletes keep leaving tombstones after finalisation)."""
    stop = stop or threading.Event()
    while not stop.wait(interval):
        try:
            purged, kept = purge_for(migration, consumer)
        except (ClientError, BotoCoreError) as exc:
            if not is_transient(exc):
                raise
            log.warning("tombstone sweep failed (%s); retrying in %.0fs", exc, interval)
            continue
        if purged:
            log.info("tombstones below the watermark purged: %d (kept %d)", purged, kept)
