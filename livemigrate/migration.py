"""One migration, opened and checked: the shared context both engines run in.

``open_migration`` runs every check that can fail before anything is written (tables, stream,
transform, ownership of the destination) and then records the migration in the control table.
The phase helpers here are the one place where the engines agree on shared state.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from livemigrate import accounting
from livemigrate.accounting import Ledger, Role
from livemigrate.aws import AwsClients
from livemigrate.config import Settings
from livemigrate.control import ControlStore
from livemigrate.deadletters import DeadLetters, record_code_version
from livemigrate.destination import DestinationWriter
from livemigrate.errors import ConflictError, PreflightError
from livemigrate.keys import CONSUMER_SOURCE, META, PLAN
from livemigrate.tables import TableInfo, create_like, describe, require_stream
from livemigrate.transform import Transformer, load_transform

BACKFILL_COMPLETE = "complete"
# The change source kinds (ARCHITECTURE.md rule 15); META of a migration recorded before the
# setting existed has none and is a DynamoDB Streams migration.
DYNAMODB_STREAMS = "dynamodb-streams"


@dataclass(frozen=True)
class Migration:
    """Everything a worker needs, built once and shared (clients are thread-safe)."""

    settings: Settings
    clients: AwsClients
    store: ControlStore
    dead_letters: DeadLetters
    source: TableInfo
    destination: TableInfo
    transformer: Transformer
    writer: DestinationWriter

    @property
    def id(self) -> str:
        return self.settings.migration_id

    def backfill_complete(self, now: float | None = None) -> bool:
        """True once the backfill is complete *and quiet*: then deletes need no tombstone.

        Complete means every segment and split is done (PLAN.state). Quiet means wall time
        ``now`` (default: this machine's clock) has reached PLAN.quiet_at, the time by which
        every backfill lease that existed at completion has expired, plus a margin: a worker
        that was paused past its lease stops writing before its lease expires (its fence,
        ``livemigrate.fencing``), so after ``quiet_at`` no late put-if-absent can follow a real
        delete and resurrect the item (ARCHITECTURE.md rule 11; reasoning in backfill/plan.py).
        A plan completed without ``quiet_at`` (older versions) counts as quiet.
        """
        plan = self.store.get(PLAN)
        if plan is None or plan.get("state") != BACKFILL_COMPLETE:
            return False
        quiet_at = plan.get("quiet_at")
        now = time.time() if now is None else now
        return quiet_at is None or now >= float(quiet_at)

    def consumer_started(self) -> dict[str, Any] | None:
        """The recorded start of the source-stream consumer, if one has started.

        Only ``CONSUMER#source`` counts: the search sink and the reverse consumer read other
        streams, and a backfill with neither of them running would lose live writes.
        """
        return self.store.get(CONSUMER_SOURCE)


def inverse_transform(settings: Settings, meta: dict[str, Any]) -> str | None:
    """The migration's inverse transform: configured, or recorded in META by `reverse`."""
    recorded = settings.inverse_transform or meta.get("inverse_transform")
    return str(recorded) if recorded else None


def open_migration(
    settings: Settings,
    clients: AwsClients,
    *,
    create_destination: bool = False,
    require_source_stream: bool = True,
) -> Migration:
    """Check everything, then record the migration; raises a LivemigrateError on bad input.

    Parameters
    ----------
    create_destination:
        Create a missing destination table with the source's key schema (and a stream for
        the search sink) instead of refusing.
    require_source_stream:
        The consumer needs a NEW_AND_OLD_IMAGES stream on the source; a backfill dry run does
        not.
    """
    if settings.source_table == settings.destination_table:
        raise PreflightError(
            f"source and destination are the same table ({settings.source_table!r})",
            "migrate into a new table: set LIVEMIGRATE_DESTINATION_TABLE to another name",
        )
    source = describe(clients.dynamodb, settings.source_table, "source")
    # With a Kinesis change source the table's own stream is not read (the destination is).
    if require_source_stream and settings.change_source == DYNAMODB_STREAMS:
        require_stream(source)
    try:
        destination = describe(clients.dynamodb, settings.destination_table, "destination")
    except PreflightError:
        if not create_destination:
            raise
        destination = create_like(clients.dynamodb, source, settings.destination_table)
    transformer = Transformer(
        load_transform(settings.transform), destination.key_names, destination.key_types
    )
    store = ControlStore(clients.dynamodb, settings.control_table, settings.migration_id)
    store.ledger = ledger(clients, settings)
    store.ensure_table()
    meta = _record(store, settings)
    store.register_destination(settings.destination_table, settings.source_table)
    record_code_version(store, settings.transform, transformer.code_hash)  # dead-letters checks
    return Migration(
        settings=settings,
        clients=clients,
        store=store,
        dead_letters=DeadLetters(store, transformer.code_hash),
        source=source,
        destination=destination,
        transformer=transformer,
        writer=DestinationWriter(
            clients.dynamodb,
            settings.destination_table,
            destination.key_names,
            settings.migration_id,
            # A reverse consumer must tell this consumer's deletes from the application's.
            mark_deletes=inverse_transform(settings, meta) is not None,
        ),
    )


def ledger(clients: AwsClients, settings: Settings) -> Ledger:
    """Count this process's requests (``livemigrate.accounting``) under the migration's roles."""
    tables: dict[str, Role] = {
        settings.source_table: "source",
        settings.destination_table: "destination",
        settings.control_table: "control",
    }
    return Ledger(accounting.install(clients.dynamodb), tables)


def _record(store: ControlStore, settings: Settings) -> dict[str, Any]:
    """Record the migration's spec (or check it against the recorded one); the META item."""
    spec = {
        "source_table": settings.source_table,
        "destination_table": settings.destination_table,
        "transform": settings.transform,
    }
    first = {**spec, "change_source": settings.change_source, "created_at": time.time()}
    if store.put(META, first, only_if_absent=True):
        return dict(first)
    held = store.get(META) or {}
    changed = {k: (held.get(k), v) for k, v in spec.items() if held.get(k) != v}
    _check_change_source(settings, held)
    if changed:
        detail = ", ".join(
            f"{k}: recorded {a!r}, configured {b!r}" for k, (a, b) in changed.items()
        )
        raise ConflictError(
            f"migration {settings.migration_id!r} was recorded with a different spec ({detail})",
            "use a new LIVEMIGRATE_MIGRATION_ID for a different migration, or restore the "
            "original settings",
        )
    return held


def _check_change_source(settings: Settings, held: dict[str, Any]) -> None:
    """Refuse another change source kind than the one recorded at the first start: versions
    of two kinds (sequence numbers, creation times) are never compared (rule 15)."""
    recorded = str(held.get("change_source") or DYNAMODB_STREAMS)
    if recorded == settings.change_source:
        return
    raise ConflictError(
        f"migration {settings.migration_id!r} reads its changes from {recorded}, recorded at "
        f"its first start; this command is configured for {settings.change_source}: the "
        "destination's versions come from the recorded source and cannot be compared with "
        f"{settings.change_source} versions",
        f"set LIVEMIGRATE_CHANGE_SOURCE={recorded} (change_source in livemigrate.toml) for "
        "this migration, or start a new migration (new LIVEMIGRATE_MIGRATION_ID and destination "
        "table) to read another source",
    )
