"""A worker's lease on one unit (segment or split): its fence, its heartbeat, its checkpoints.

The lease in the control table says "mine until ``lease_expires``" (wall time); the worker
keeps a ``Fence`` (``livemigrate.fencing``) on its monotonic clock that ends a margin before
that, counted from the moment the claim or renewal was *sent*. Every destination write and
every split the worker makes runs inside the fence, so nothing it writes lands after another
worker could have taken the unit over (issue 10, item 1).

While a page is being written the lease is renewed halfway to the fence (every third of the
lease with the default margin; heartbeat), from
the write threads before a put and from the worker thread while it waits, so a page slower than
the lease (a low write cap, throttling) is not taken over and read again (issue 10, item 2). A
renewal that is refused (taken over, or expired) revokes the fence: writes stop at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from livemigrate import fencing
from livemigrate.clock import Clock
from livemigrate.control import HELD, ControlStore
from livemigrate.errors import LeaseLost
from livemigrate.fencing import Fence

log = logging.getLogger(__name__)


class UnitLease:
    """The lease this worker holds on ``sk``, from a claim sent at monotonic ``sent_at``.

    Parameters
    ----------
    store:
        The control table.
    sk, owner:
        The unit and this worker.
    clock:
        ``now()`` for the control table, ``monotonic()`` for the fence.
    ttl, margin:
        Lease length and the fence margin (seconds).
    sent_at:
        Monotonic time taken just before the claim was sent.
    """

    def __init__(
        self,
        store: ControlStore,
        sk: str,
        owner: str,
        *,
        clock: Clock,
        ttl: float,
        margin: float,
        sent_at: float,
    ) -> None:
        self.store = store
        self.sk = sk
        self.owner = owner
        self.clock = clock
        self.ttl = ttl
        self.margin = margin
        self.fence = Fence.for_lease(clock, sent_at, ttl, margin, f"lease {sk}")
        # Renew halfway to the fence (a third of the lease with the default margin).
        self.interval = max(0.0, ttl - margin) / 2
        self._next = sent_at + self.interval
        self._renewing = threading.Lock()
        self.released = False

    @property
    def poll_seconds(self) -> float:
        """How often a waiting worker thread looks whether a heartbeat is due (real time)."""
        return max(0.01, min(0.5, self.interval / 2))

    def renew(
        self, values: Mapping[str, Any] | None = None, add: Mapping[str, float] | None = None
    ) -> None:
        """Renew now, writing ``values`` with it (a checkpoint) and adding ``add`` to counters;
        LeaseLost revokes the fence."""
        with self._renewing:
            self._renew(values, add)

    def keep_alive(self) -> None:
        """Renew if ``interval`` has passed since the last renewal (one thread at a time; the
        others go on). Raises LeaseLost (fence revoked) if the lease is gone."""
        if self.clock.monotonic() < self._next or not self._renewing.acquire(blocking=False):
            return
        try:
            if self.clock.monotonic() >= self._next:
                self._renew(None, None)
        finally:
            self._renewing.release()

    def _renew(self, values: Mapping[str, Any] | None, add: Mapping[str, float] | None) -> None:
        sent = self.clock.monotonic()
        try:
            self.store.renew(self.sk, self.owner, self.ttl, self.clock.now(), values, add=add)
        except LeaseLost:
            self.fence.revoke()
            raise
        self.fence.extend(sent, self.ttl, self.margin)
        self._next = sent + self.interval

    def put_new(self, items: Mapping[str, Mapping[str, Any]]) -> None:
        """Create control-table items (splits) only while the lease is held, inside the fence."""
        with fencing.guarded(self.fence):
            try:
                self.store.put_new_while_held(self.sk, self.owner, self.clock.now(), items)
            except LeaseLost:
                self.fence.revoke()
                raise

    def finish(self, values: Mapping[str, Any], add: Mapping[str, float] | None = None) -> None:
        """Write the last checkpoint and give the lease up in one update (after every write
        of ours is acknowledged): the fence is revoked first; the update needs the lease
        still ours and unexpired, as a renewal does (LeaseLost otherwise)."""
        self.fence.revoke()
        item = self.store.update(
            self.sk,
            values,
            add=add,
            remove=("lease_owner", "lease_expires"),
            condition=HELD,
            condition_values={"me": self.owner, "now": self.clock.now()},
            returns=False,
        )
        if item is None:
            raise LeaseLost(f"lease {self.sk} is no longer held by {self.owner}")
        self.released = True

    def release(self) -> bool:
        """Give the lease up (after every write of ours is acknowledged); revokes the fence."""
        self.fence.revoke()
        self.released = True
        return self.store.release(self.sk, self.owner)
