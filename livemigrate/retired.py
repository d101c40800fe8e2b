"""The retired table is frozen (ARCHITECTURE.md rule 13).

After a cutover the application writes the destination; the source is retired. A change that
still reaches the source afterwards (a TTL expiry of the stale copy, a process that never
learned of the flip, an operator's script) must not be replicated over what the application
wrote since: a TTL delete would remove the renewed item, a late put would overwrite it (the
application's own write keeps an old ``_lm_seq`` or none, so the version rule alone lets the
source record win). The same holds in reverse after a rollback: the destination is retired and
the reverse consumer must not carry its late changes back to the source.

So a consumer asks ``RetiredTable.frozen`` of every record before applying it: a record of a
table that the flag has retired, created at or after the flip's ``frozen_after``, is not
applied. It is counted and reported loudly (``retired_writes``, the last keys and the time on
``CONSUMER#<name>``, a warning in the log), never silently dropped.

Creation times: DynamoDB Streams round ``ApproximateCreationDateTime`` down to the second, so a
record stamped ``T`` was made in ``[T, T + 1)``. A record is frozen unless it was certainly made
before ``frozen_after`` (``T + 1 <= frozen_after``). That loses nothing: for a fenced flip,
``frozen_after`` is the fence, and every record made before it was applied before the flip (the
drain); a record made before the fence and read again after (a replay) was applied already.
The clocks of DynamoDB and of the machine that flipped are assumed to agree within
``STREAM_TIME_PRECISION``.

Before a cutover (and for the source after a rollback) nothing is frozen: a TTL expiry in the
source is a real delete of the source item, and the consumer applies it to the destination like
any delete.

The flag is read from the control table (``ControlFlagStore``) with a cache: a cached flag
that names no flip and no fence is good for records made before it was read; any newer record
(every record of a consumer that keeps up) makes the applier read the flag again, once per
batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from livemigrate import keys
from livemigrate.control import ControlStore
from livemigrate.flag import FlagView, Side
from livemigrate.items import key_id
from livemigrate.records import STREAM_TIME_PRECISION, StreamRecord
from livemigrate.replication import before_activation

log = logging.getLogger("livemigrate.retired")

KEYS_KEPT = 10  # the latest frozen keys shown by `livemigrate status`


class RetiredTable:
    """Decides which records of ``side``'s stream are late changes of a retired table.

    Parameters
    ----------
    view:
        The consumer's view of the flag (the control table's).
    side:
        The table whose stream this consumer reads: ``"source"`` for the forward consumer,
        ``"destination"`` for the reverse one.
    store, consumer:
        Where the counts are recorded (``CONSUMER#<consumer>``).
    """

    def __init__(self, view: FlagView, side: Side, store: ControlStore, consumer: str) -> None:
        self.view = view
        self.side = side
        self.store = store
        self.consumer_sk = keys.consumer(consumer)

    def frozen(self, records: Sequence[StreamRecord]) -> set[int]:
        """Positions in ``records`` that must not be applied (the flag is read if needed)."""
        return self.classify(records)[0]

    def classify(self, records: Sequence[StreamRecord]) -> tuple[set[int], set[int]]:
        """(frozen, made by the forward consumer) positions of ``records``, from one flag.

        The second set is only ever non-empty for the destination's stream: a change of the
        destination made before it became the active table is a forward consumer's write (or
        the backfill's), never the application's (``replication.before_activation``).
        """
        if not records:
            return set(), set()
        flag = self.view.for_records(max(r.approximate_creation for r in records))
        frozen: set[int] = set()
        if flag.retired(self.side):
            frozen = {
                i
                for i, record in enumerate(records)
                if record.approximate_creation + STREAM_TIME_PRECISION > flag.frozen_after
            }
        forward: set[int] = set()
        if self.side == "destination":
            forward = {i for i, r in enumerate(records) if before_activation(flag, r)} - frozen
        return frozen, forward

    def report(self, records: Sequence[StreamRecord], positions: set[int]) -> None:
        """Count the frozen records on the consumer's item and warn (one write per batch)."""
        if not positions:
            return
        frozen = [records[i] for i in sorted(positions)]
        keys = [key_id(r.keys) for r in frozen][-KEYS_KEPT:]
        log.warning(
            "%d change(s) to the retired %s table after the flip were NOT applied (the "
            "active table is the other one): %s",
            len(frozen),
            self.side,
            ", ".join(keys),
        )
        update: dict[str, Any] = {
            "retired_last_at": self.view.clock.now(),
            "retired_last_keys": keys,
        }
        self.store.update(self.consumer_sk, update, add={"retired_writes": len(frozen)})
