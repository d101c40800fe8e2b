"""Shard leases in the control table, following the Kinesis Client Library's model.

One item per shard and consumer name, ``SHARD#<name>#<shard_id>``: lease_owner, lease_expires,
lease_counter, checkpoint (padded sequence number of the last applied record), parents,
finished, stream_arn, records_applied, last_applied_at, lag_seconds. Every claim, renewal,
checkpoint and release is one conditional write (``ControlStore.claim/renew/release``), so two
processes can never both believe they hold a shard, and a checkpoint is written only by the
lease holder.

Balancing is a pure decision (``choose``): take free or expired leases up to a fair share of the
readable shards among the live owners. A dead process's leases expire and are taken over.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from livemigrate import keys
from livemigrate.control import ControlStore
from stream_consumer.source import ShardInfo


def shard_sk(name: str, shard_id: str) -> str:
    return keys.shard(name, shard_id)


def live_owner(state: Mapping[str, Any], now: float) -> str | None:
    """The holder of a lease that has not expired, else None."""
    owner = state.get("lease_owner")
    if owner is None or float(state.get("lease_expires", 0)) <= now:
        return None
    return str(owner)


@dataclass(frozen=True)
class BalancePolicy:
    """Fair-share lease taking (KCL style, without stealing from live owners)."""

    def choose(
        self,
        readable: Iterable[str],
        states: Mapping[str, Mapping[str, Any]],
        me: str,
        now: float,
    ) -> list[str]:
        """Shards to claim now: free or expired ones, up to our fair share.

        Parameters
        ----------
        readable:
            Shards lineage allows reading (not finished, parents finished).
        states:
            Recorded shard items by shard id.
        me:
            Our worker id.
        now:
            The current time (lease expiry is compared against it).
        """
        work = sorted(readable)
        owners = {live_owner(states.get(s, {}), now) for s in work} - {None}
        workers = len(owners | {me})
        share = math.ceil(len(work) / workers) if work else 0
        mine = sum(1 for s in work if live_owner(states.get(s, {}), now) == me)
        free = [s for s in work if live_owner(states.get(s, {}), now) is None]
        return free[: max(0, share - mine)]


class ShardLeases:
    """The SHARD# items of one consumer name."""

    def __init__(self, store: ControlStore, name: str, stream_arn: str) -> None:
        self.store = store
        self.name = name
        self.stream_arn = stream_arn

    def sk(self, shard_id: str) -> str:
        return shard_sk(self.name, shard_id)

    def states(self) -> dict[str, dict[str, Any]]:
        """Every recorded shard item of this consumer, by shard id (consistent read)."""
        prefix = keys.shard_prefix(self.name)
        return {sk[len(prefix) :]: item for sk, item in self.store.query(prefix)}

    def register(self, shards: Iterable[ShardInfo], known: Mapping[str, Any]) -> int:
        """Create items for newly listed shards (only if absent); returns how many were new."""
        created = 0
        for shard in shards:
            if shard.shard_id in known:
                continue
            attrs = {
                "parents": list(shard.parents),
                "finished": False,
                "stream_arn": self.stream_arn,
                "records_applied": 0,
            }
            if self.store.put(self.sk(shard.shard_id), attrs, only_if_absent=True):
                created += 1
        return created

    def claim(self, shard_id: str, me: str, ttl: float, now: float) -> dict[str, Any] | None:
        return self.store.claim(self.sk(shard_id), me, ttl_seconds=ttl, now=now)

    def checkpoint(
        self, shard_id: str, me: str, ttl: float, now: float, progress: Mapping[str, Any]
    ) -> None:
        """Write progress with a lease renewal; raises LeaseLost if the lease moved on."""
        self.store.renew(self.sk(shard_id), me, ttl, now, set_values=progress)

    def release(self, shard_id: str, me: str, progress: Mapping[str, Any] | None = None) -> bool:
        return self.store.release(self.sk(shard_id), me, progress)

    def mark_trimmed(self, shard_id: str) -> None:
        """A parent gone past retention: finished, so its children can proceed."""
        self.store.update(self.sk(shard_id), {"finished": True, "trimmed": True})
