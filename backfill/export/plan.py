"""The plan of an export backfill: one ``SEG#<nnnnnn>`` unit per data file of the manifest.

Export units are segments to everything that reads the plan (claims, leases, completion,
``quiet_at``, status, the cutover gates); they carry the data file instead of a Scan segment:

- ``PLAN`` {the Scan plan's fields, source: "export", export_arn, export_uri, export_time,
  export_items}
- ``SEG#<nnnnnn>`` {the segment fields, file_key, file_items, file_md5, file_etag,
  verified_etag (saved with the first checkpoint after the file matched its manifest),
  checkpoint ``{"line": n}`` (JSON), refused (why the file does not match; state refused)}

A migration has one plan: a Scan plan and an export plan never mix.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from backfill import plan
from backfill.export.manifest import DataFile, Export
from livemigrate.control import ControlStore
from livemigrate.counters import fresh_unit_counters
from livemigrate.errors import PreflightError
from livemigrate.keys import PLAN
from livemigrate.migration import Migration

SOURCE = "export"
REFUSED = "refused"


def ensure_export_plan(
    store: ControlStore, export: Export, leases: plan.Leases | None = None
) -> plan.Planned:
    """Write the plan for ``export`` if there is none; returns it.

    Safe from many processes at once and after a crash half-way (like ``plan.ensure_plan``).
    """

    def units(_: int) -> list[dict[str, Any]]:
        return [_fresh_unit(n, data) for n, data in enumerate(export.files)]

    return plan.write_plan(
        store, _fresh_plan(export), lambda held: _same_export(store, held, export), units, leases
    )


def _fresh_plan(export: Export) -> dict[str, Any]:
    return {
        "state": plan.PLANNED,
        "total_segments": len(export.files),
        "created_at": time.time(),
        "source": SOURCE,
        "export_arn": export.arn,
        "export_uri": export.uri,
        "export_time": export.export_time,
        "export_items": export.item_count,
    }


def _fresh_unit(n: int, data: DataFile) -> dict[str, Any]:
    return {
        "state": plan.PENDING,
        "segment": n,
        "checkpoint": None,
        **fresh_unit_counters(),
        "file_key": data.key,
        "file_items": data.item_count,
        "file_md5": data.md5,
        "file_etag": data.etag,
    }


def _same_export(store: ControlStore, current: dict[str, Any], export: Export) -> None:
    if current.get("source") != SOURCE:
        raise PreflightError(
            f"migration {store.migration_id!r} already has a Scan backfill plan "
            f"(state {current.get('state')}); an export cannot be mixed into it",
            "finish it with `livemigrate backfill` (without --from-export), or load the export "
            "under a new migration id",
        )
    if current.get("export_uri") != export.uri:
        raise PreflightError(
            f"migration {store.migration_id!r} is loading export {current.get('export_uri')}, "
            f"not {export.uri}",
            f"run `livemigrate backfill --from-export {current.get('export_uri')}` to finish it, "
            "or load the other export under a new migration id",
        )


def data_file(unit: dict[str, Any]) -> DataFile:
    """The data file an export unit loads."""
    return DataFile(
        key=str(unit["file_key"]),
        item_count=int(unit["file_items"]),
        md5=str(unit["file_md5"]),
        etag=str(unit.get("file_etag") or ""),
    )


def is_export_plan(store: ControlStore) -> bool:
    return (store.get(PLAN) or {}).get("source") == SOURCE


def refused(store: ControlStore) -> list[tuple[str, str]]:
    """(file key, reason) of every unit refused because its file does not match the manifest."""
    return [
        (str(u.item.get("file_key")), str(u.item.get("refused")))
        for u in plan.units(store, plan.SEG_PREFIX)
        if u.item.get("state") == REFUSED
    ]


def settled(store: ControlStore) -> bool:
    """Every unit is done or refused: nothing is left that a worker could do."""
    return all(u.done or u.item.get("state") == REFUSED for u in plan.units(store, plan.SEG_PREFIX))


def check_export_time(migration: Migration, export: Export) -> None:
    """Refuse an export taken before the stream consumer started: the changes made between
    the two are in neither (the export misses them, the consumer never read them)."""
    started = migration.consumer_started()
    if started is None:  # refused before, unless --without-consumer accepted the loss
        return
    at = float(started["started_at"])
    if export.export_time < at:
        raise PreflightError(
            f"export {export.arn or export.uri} was taken at {iso(export.export_time)}, before "
            f"the stream consumer of migration {migration.settings.migration_id!r} started at "
            f"{iso(at)}: changes made between the two would be lost",
            "request a new export now that the consumer runs (`livemigrate export start "
            "--bucket ...`), then run `livemigrate backfill --from-export` with it",
        )


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, tz=UTC).isoformat(timespec="seconds")
