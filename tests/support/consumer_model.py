"""A model of "what the destination must hold" and the scenarios played against it.

``ModelWriter`` is an in-memory destination with ``DestinationWriter``'s conditions; ``play``
runs a random history through the real ``DestinationApplier`` into a writer (the model in
tests/unit/test_consumer_model.py, moto in tests/integration/test_consumer_rules_moto.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

from livemigrate.clock import FakeClock
from livemigrate.destination import DestinationWriter, Held, Outcome
from livemigrate.items import TypedItem, key_id, to_plain, to_typed
from livemigrate.ownership import owner_id
from livemigrate.records import EventName, StreamRecord
from livemigrate.replication import FORWARD
from livemigrate.transform import Transformer, load_transform
from livemigrate.versioning import BACKFILL_SEQ, OWNER_ATTR, SEQ_ATTR, TOMBSTONE_ATTR, pad_seq
from stream_consumer.applier import DeleteMode, DestinationApplier
from stream_consumer.metrics import Metrics

JAN = 1704067200


MONTH = 2_678_400


TRANSFORM = Transformer(
    load_transform("livemigrate.examples.hot_outbox:transform"),
    ("pk", "sk"),
    {"pk": "S", "sk": "S"},
)


class ModelWriter(DestinationWriter):
    """An in-memory destination with DestinationWriter's conditions (rules 1-3, 12)."""

    def __init__(self) -> None:
        self.key_names = ("pk", "sk")
        self.marks = FORWARD
        self.items: dict[str, TypedItem] = {}

    def _held_seq(self, key: TypedItem) -> str | None:
        held = self.items.get(key_id(self.key(key)))
        return None if held is None else held.get(SEQ_ATTR, {}).get("S")

    def _found(self, key: TypedItem) -> Held | None:
        held = self.items.get(key_id(self.key(key)))
        return None if held is None else self._held({"Item": held})

    def _set(self, item: TypedItem, seq: str, owner: str | None, **extra: Any) -> None:
        stamps = {SEQ_ATTR: {"S": seq}} | ({} if owner is None else {OWNER_ATTR: {"S": owner}})
        self.items[key_id(self.key(item))] = {**item, **stamps, **extra}

    def put_if_absent(
        self, item: TypedItem, source_key: Mapping[str, Any] | None = None
    ) -> Outcome:
        held = self.items.get(key_id(self.key(item)))
        if held is not None:
            # The backfill's own earlier copy (a page read again) is not a live write.
            own = held[SEQ_ATTR]["S"] == BACKFILL_SEQ and TOMBSTONE_ATTR not in held
            return Outcome.ALREADY_COPIED if own else Outcome.SUPERSEDED
        self._set(item, BACKFILL_SEQ, None if source_key is None else owner_id(source_key))
        return Outcome.WRITTEN

    def _is_newer(self, key: TypedItem, seq: str) -> bool:
        held = self._held_seq(key)
        return held is None or held < seq

    def _other_owner(self, key: TypedItem, owner: str | None) -> bool:
        held = self._found(key)
        return owner is not None and held is not None and held.owner not in (None, owner)

    def put_if_newer(self, item: TypedItem, seq: str) -> Outcome:
        if not self._is_newer(item, seq):
            return Outcome.STALE
        self._set(item, seq, None)
        return Outcome.APPLIED

    def claim(
        self, item: TypedItem, seq: str, owner: str, replacing: Held | None = None
    ) -> tuple[Outcome, Held | None]:
        held = self._found(item)
        if replacing is not None:
            if held is None or (held.owner, held.seq) != (replacing.owner, replacing.seq):
                return Outcome.CHANGED, held
        elif held is not None and (self._other_owner(item, owner) or not self._is_newer(item, seq)):
            other = self._other_owner(item, owner)
            return (Outcome.OWNED_BY_OTHER if other else Outcome.STALE), held
        self._set(item, seq, owner)
        return Outcome.APPLIED, None

    def remove(
        self,
        key: TypedItem,
        seq: str,
        *,
        tombstone: bool,
        owner: str | None = None,
        mark: bool | None = None,
    ) -> Outcome:
        if self._other_owner(key, owner):
            return Outcome.NOT_OWNER
        if not self._is_newer(key, seq):
            return Outcome.STALE
        if tombstone:
            self._set(key, seq, owner, **{TOMBSTONE_ATTR: {"BOOL": True}})
            return Outcome.TOMBSTONED
        self.items.pop(key_id(self.key(key)), None)
        return Outcome.DELETED

    def purge_tombstone(self, key: TypedItem, seq: str) -> bool:
        held = self.items.get(key_id(self.key(key)))
        if held is None or TOMBSTONE_ATTR not in held or held[SEQ_ATTR]["S"] != seq:
            return False
        del self.items[key_id(self.key(key))]
        return True

    def tombstones(self) -> list[tuple[TypedItem, str]]:
        return [(self.key(i), i[SEQ_ATTR]["S"]) for i in self.items.values() if TOMBSTONE_ATTR in i]

    def visible(self) -> dict[str, dict[str, Any]]:
        return {
            k: {n: v for n, v in to_plain(i).items() if not n.startswith("_lm_")}
            for k, i in self.items.items()
            if TOMBSTONE_ATTR not in i
        }


class SwitchableMode(DeleteMode):
    """Delete mode driven by the scenario instead of the control table."""

    def __init__(self, complete: Callable[[], bool]) -> None:
        super().__init__(complete, None, "source", FakeClock(), refresh_seconds=0.0)  # type: ignore[arg-type]

    def _switch(self, now: float) -> None:
        self._real = True


@dataclass(frozen=True)
class Scenario:
    section: str
    events: list[tuple[int, int | None, int]]  # (item, month or None = delete, value)
    snapshot_at: int
    backfill_at: int
    complete_at: int
    batches: list[int]
    crashes: frozenset[int]
    replay: bool


def scenarios(section: str = "docket") -> st.SearchStrategy[Scenario]:
    event = st.tuples(st.integers(0, 2), st.one_of(st.none(), st.integers(0, 2)), st.integers(0, 9))
    return st.builds(
        Scenario,
        section=st.just(section),
        events=st.lists(event, min_size=1, max_size=14),
        snapshot_at=st.integers(0, 14),
        backfill_at=st.integers(0, 14),
        complete_at=st.integers(0, 14),
        batches=st.lists(st.integers(1, 5), min_size=1, max_size=6),
        crashes=st.frozensets(st.integers(0, 14), max_size=4),
        replay=st.booleans(),
    )


def history(s: Scenario) -> tuple[list[StreamRecord], list[dict[str, Any]], dict[int, Any]]:
    """Stream records of the scenario, the snapshot the backfill read, and the final source."""
    source: dict[int, dict[str, Any]] = {}
    records: list[StreamRecord] = []
    snapshot: list[dict[str, Any]] | None = None
    for n, (which, month, value) in enumerate(s.events):
        if n == s.snapshot_at:
            snapshot = [dict(i) for i in source.values()]
        keys = {"pk": f"section-outbox|{s.section}", "sk": f"item-{which}"}
        old = source.get(which)
        if month is None:
            if old is None:
                continue
            new = None
            del source[which]
        else:
            new = {**keys, "createdAt": Decimal(JAN + month * MONTH + which), "v": value}
            source[which] = new
        name: EventName = "REMOVE" if new is None else ("MODIFY" if old else "INSERT")
        records.append(
            StreamRecord(
                event_name=name,
                keys=to_typed(keys),
                new_image=None if new is None else to_typed(new),
                old_image=None if old is None else to_typed(old),
                sequence_number=pad_seq(str(10**20 + len(records))),
                approximate_creation=0.0,
            )
        )
    if snapshot is None:
        snapshot = [dict(i) for i in source.values()]
    return records, snapshot, source


def expected(source: dict[int, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for item in source.values():
        for typed in TRANSFORM.run(item):
            out[key_id({"pk": typed["pk"], "sk": typed["sk"]})] = to_plain(typed)
    return out


def play(s: Scenario, writer: DestinationWriter, tombstones: Callable[[], list[Any]]) -> Any:
    """Run the scenario through the real applier into ``writer``; returns the final source."""
    records, snapshot, source = history(s)
    state = {"complete": False, "backfilled": False}
    applier = DestinationApplier(
        TRANSFORM, writer, SwitchableMode(lambda: state["complete"]), Metrics("source"), threads=2
    )

    def backfill() -> None:
        for item in snapshot:
            for out in TRANSFORM.run(item):
                writer.put_if_absent(out, to_typed({"pk": item["pk"], "sk": item["sk"]}))
        state["backfilled"] = True

    try:
        _stream(s, records, applier, state, backfill)
        if not state["backfilled"]:
            backfill()
        state["complete"] = True
        if s.replay:
            for start in range(0, len(records), 3):
                applier.apply(records[start : start + 3])
        for key, seq in tombstones():
            writer.purge_tombstone(key, seq)
    finally:
        applier.close()
    return source


def _stream(
    s: Scenario,
    records: list[StreamRecord],
    applier: DestinationApplier,
    state: dict[str, bool],
    backfill: Callable[[], None],
) -> None:
    """Batches in order; the backfill and the switch to real deletes at their points."""
    pos = step = 0
    crashes = set(s.crashes)
    while pos < len(records):
        if not state["backfilled"] and pos >= s.backfill_at:
            backfill()
        if state["backfilled"] and pos >= s.complete_at:
            state["complete"] = True  # real deletes only once the backfill is done
        size = s.batches[step % len(s.batches)]
        applier.apply(records[pos : pos + size])
        step += 1
        if step in crashes:  # crash before the checkpoint: the batch comes again
            crashes.discard(step)
            continue
        pos += size
