"""Scenarios of a destination key handed between source items on different shards (rule 12),
and the harness that plays them (tests/unit/ and tests/integration/test_consumer_handoff.py).
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from livemigrate.clock import FakeClock
from livemigrate.destination import DestinationWriter
from livemigrate.errors import TransformOutputError
from livemigrate.examples.by_email import transform
from livemigrate.items import TypedItem, key_id, to_plain, to_typed
from livemigrate.ownership import OwnershipRecords
from livemigrate.records import ApplyFailure, StreamRecord
from livemigrate.transform import Transformer
from stream_consumer.applier import DestinationApplier
from stream_consumer.metrics import Metrics
from stream_consumer.scripted import ScriptedStream, ScriptedTable
from tests.support.consumer_model import SwitchableMode

TRANSFORM = Transformer(transform, ("pk", "sk"), {"pk": "S", "sk": "S"})


# Handoffs are what this is about: most writes move the shared address.
WRITES = ("take", "give", "take", "give", "take", "give", "touch", "delete", "bad", "fix")


class MemoryOwnership(OwnershipRecords):
    """``OwnershipRecords`` in a dict (the control table is not what these tests are about)."""

    def __init__(self) -> None:
        self.keys: dict[str, list[TypedItem]] = {}
        self.collisions = 0

    def remember(self, owner: str, keys: Any, seq: str) -> None:
        self.keys[owner] = list(keys)

    def owned(self, owner: str) -> list[TypedItem]:
        return list(self.keys.get(owner, []))

    def count_collision(self) -> None:
        self.collisions += 1


@dataclass(frozen=True)
class Scenario:
    offsets: tuple[int, int]  # per shard: how far its sequence numbers start above the other's
    steps: list[tuple[str, int, int, bool]]  # ("write", user, what, _) | ("apply", shard, n, crash)
    mode: str  # "tombstones" | "deletes" | "switch"
    switch_at: int
    drain_first: int = 0  # which shard the final catch-up reads first
    third: int = 0  # the shard of the third user (the first two are on shards 0 and 1)
    # The backfill: (step it reads the source at, step it writes that stale copy at). Real
    # deletes start only after it wrote (rule 2): not with mode "deletes".
    backfill: tuple[int, int] | None = None


def scenarios() -> st.SearchStrategy[Scenario]:
    write = st.tuples(
        st.just("write"), st.integers(0, 2), st.integers(0, len(WRITES) - 1), st.just(False)
    )
    apply = st.tuples(st.just("apply"), st.integers(0, 1), st.integers(1, 4), st.booleans())
    return st.builds(
        Scenario,
        offsets=st.tuples(st.integers(0, 8), st.integers(0, 8)),
        steps=st.lists(st.one_of(write, apply), min_size=2, max_size=30),
        mode=st.sampled_from(["tombstones", "deletes", "switch"]),
        switch_at=st.integers(0, 30),
        drain_first=st.integers(0, 1),
        third=st.integers(0, 1),
        backfill=st.one_of(
            st.none(), st.tuples(st.integers(0, 30), st.integers(0, 30)).map(sorted).map(tuple)
        ),
    ).filter(lambda s: s.backfill is None or s.mode != "deletes")


def users_on_shards(stream: ScriptedStream, tag: str, third: int) -> list[TypedItem]:
    """Three user keys: on shards 0, 1 and ``third``."""
    shards = stream.open_shards()
    wanted = [shards[0], shards[1], shards[third]]
    users: list[TypedItem | None] = [None, None, None]
    for n in itertools.count():
        key = to_typed({"pk": f"user|{tag}|{n}", "sk": "profile"})
        free = [
            i
            for i, shard in enumerate(wanted)
            if users[i] is None and shard == stream.shard_for(key)
        ]
        if free:
            users[free[0]] = key
        if all(users):
            return [u for u in users if u is not None]
    raise AssertionError("unreachable")


class Harness:
    """The source, its scripted stream, and the consumer's per-shard positions."""

    def __init__(
        self,
        writer: DestinationWriter,
        s: Scenario,
        tag: str = "",
        source_reader: Callable[[TypedItem], TypedItem | None] | None = None,
    ) -> None:
        self.stream = ScriptedStream(FakeClock(), shards=2, seq_offsets=s.offsets)
        self.table = ScriptedTable(self.stream)
        self.tag = tag or uuid.uuid4().hex[:8]
        self.shared = f"shared-{self.tag}@x"
        self.users = users_on_shards(self.stream, self.tag, s.third)
        self.shards = self.stream.open_shards()
        self.positions = dict.fromkeys(self.shards, 0)
        self.real = False
        self.dead: list[str] = []
        self.ownership = MemoryOwnership()
        self.applier = DestinationApplier(
            TRANSFORM,
            writer,
            SwitchableMode(lambda: self.real),
            Metrics("source"),
            threads=2,
            source=source_reader or self.table.get,
            ownership=self.ownership,
        )
        self.version = 0

    # -- the application ------------------------------------------------------------------
    def holder(self) -> int | None:
        for n, key in enumerate(self.users):
            item = self.table.get(key)
            if item is not None and item.get("email") == {"S": self.shared}:
                return n
        return None

    def write(self, user: int, what: str) -> None:
        """One application write, only where it keeps one holder of the shared address.

        "give" is the holder's (if any): ``user`` 0 takes a private address, 1 deletes the
        holder, 2 gives it an address the transform refuses.
        """
        if what == "give":
            holder = self.holder()
            if holder is not None:
                self.write(holder, ("give_private", "delete", "bad")[user])
            return
        key = self.users[user]
        item = self.table.get(key)
        self.version += 1
        private = f"own-{user}-{self.tag}@x"
        emails = {
            "take": self.shared if self.holder() is None else None,
            "give_private": private,
            "touch": None if item is None else to_plain(item).get("email", private),
            "bad": "not-an-address",
            "fix": private if item is not None and "@" not in str(item.get("email")) else None,
        }
        if what == "delete":
            self.table.delete(key)
            return
        email = emails[what]
        if email is not None:
            self.table.put(to_typed({**to_plain(key), "email": email, "v": self.version}))

    def backfill(self, snapshot: list[TypedItem]) -> None:
        """What the backfill does with a stale read: transform, put-if-absent with the owner."""
        writer = self.applier.writer
        for item in snapshot:
            try:
                outputs = TRANSFORM.run(to_plain(item))
            except TransformOutputError:
                continue  # its dead letter
            for out in outputs:
                writer.put_if_absent(out, {name: item[name] for name in ("pk", "sk")})

    def fix_all(self) -> None:
        for user in range(len(self.users)):
            self.write(user, "fix")

    # -- the consumer ---------------------------------------------------------------------
    def records(self, shard: str) -> list[StreamRecord]:
        page = self.stream.get_records(self.stream.iterator(shard, None), 100_000)
        return [StreamRecord.from_boto(r, shard) for r in page.records]

    def pump(self, shard: str, n: int, crash: bool) -> None:
        batch = self.records(shard)[self.positions[shard] : self.positions[shard] + n]
        if not batch:
            return
        if crash:  # died before the checkpoint: the batch comes again
            self.deliver(batch, count=False)
        self.deliver(batch)
        self.positions[shard] += len(batch)

    def deliver(self, batch: list[StreamRecord], *, count: bool = True) -> None:
        """What the engine does: dead-letter a record that cannot be retried, go on after it."""
        pending = list(batch)
        while pending:
            try:
                self.applier.apply(pending)
                return
            except ApplyFailure as failure:
                assert not failure.retryable, failure.reason
                if count:
                    self.dead.append(failure.reason)
                pending = pending[failure.index + 1 :]

    def drain(self, first: int = 0) -> None:
        for shard in (self.shards[first], self.shards[1 - first]):
            self.pump(shard, 100_000, False)

    def expected(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for item in self.table.scan():
            for typed in TRANSFORM.run(to_plain(item)):
                out[key_id({"pk": typed["pk"], "sk": typed["sk"]})] = to_plain(typed)
        return out


def play(
    s: Scenario,
    writer: DestinationWriter,
    tombstones: Callable[[], Iterator[tuple[TypedItem, str]]],
    harness: Harness | None = None,
) -> Harness:
    h = harness or Harness(writer, s)
    h.real = s.mode == "deletes"
    snapshot, backfilled = None, s.backfill is None
    try:
        for n, (what, a, b, crash) in enumerate(s.steps):
            if s.backfill is not None and n == s.backfill[0]:
                snapshot = h.table.scan()
            if s.backfill is not None and n == s.backfill[1] and snapshot is not None:
                h.backfill(snapshot)
                backfilled = True
            if s.mode == "switch" and n >= s.switch_at and backfilled:
                h.real = True
            if what == "write":
                h.write(a, WRITES[b])
            else:
                h.pump(h.shards[a], b, crash)
        if not backfilled:
            h.backfill(h.table.scan() if snapshot is None else snapshot)
        h.fix_all()
        h.drain(s.drain_first)
        h.real = True
        for key, seq in list(tombstones()):
            writer.purge_tombstone(key, seq)
    finally:
        h.applier.close()
    return h
