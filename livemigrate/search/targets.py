"""Which indices the search sink writes, kept in the control table so every sink process agrees.

Control-table item ``MIG#<id>`` / ``SEARCH`` (an addition to the schema in ``control.py``):

=================  ===========================================================================
``live_index``     the index the sink keeps current (``<alias>-<migration id>``)
``building``       a resync's new index, written by the sink too while it is being built
``building_state`` ``scanning`` (deletes are written as tombstone documents, so the resync's
                   scan cannot resurrect them) or ``ready`` (scan done, tombstones purged)
``alias``          the application's alias
=================  ===========================================================================

The sink reads this item once per batch (one consistent GetItem), so a resync starting or
finishing is seen by the next batch of every sink process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from livemigrate.control import ControlStore
from livemigrate.keys import SEARCH

SCANNING = "scanning"
READY = "ready"


@dataclass(frozen=True)
class TargetState:
    """The indices to write, and those where deletes must leave tombstone documents."""

    indices: tuple[str, ...]
    tombstones_in: frozenset[str] = field(default_factory=frozenset)


class Targets(Protocol):
    def current(self) -> TargetState: ...


@dataclass(frozen=True)
class FixedTargets:
    """One index, no resync (tests, benchmarks, a one-off load)."""

    index: str

    def current(self) -> TargetState:
        return TargetState((self.index,))


class ControlTargets:
    """Targets recorded in the control table (``SEARCH`` item), read on every call.

    Parameters
    ----------
    store:
        The migration's control store.
    default_index:
        The live index when nothing is recorded yet.
    """

    def __init__(self, store: ControlStore, default_index: str) -> None:
        self.store = store
        self.default_index = default_index

    def current(self) -> TargetState:
        item = self.store.get(SEARCH) or {}
        live = str(item.get("live_index") or self.default_index)
        building = item.get("building")
        if not building or building == live:
            return TargetState((live,))
        tomb = frozenset({str(building)}) if item.get("building_state") == SCANNING else frozenset()
        return TargetState((live, str(building)), tomb)

    def record(self, **values: object) -> None:
        """Set fields of the ``SEARCH`` item (creating it with the default live index)."""
        current = self.store.get(SEARCH)
        if current is None:
            self.store.put(SEARCH, {"live_index": self.default_index}, only_if_absent=True)
        self.store.update(SEARCH, dict(values))

    def clear_building(self, new_live: str) -> None:
        """The resync is complete: ``new_live`` is the only index the sink writes."""
        self.store.update(SEARCH, {"live_index": new_live}, remove=("building", "building_state"))
