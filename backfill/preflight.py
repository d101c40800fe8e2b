"""Checks before a backfill writes anything, and the read-only dry run."""

from __future__ import annotations

import logging
from typing import TextIO

from livemigrate.aws import AwsClients
from livemigrate.config import Settings
from livemigrate.control import ControlStore
from livemigrate.errors import ConflictError, PreflightError, TransformOutputError
from livemigrate.items import TypedItem, to_json, to_plain
from livemigrate.migration import Migration, open_migration
from livemigrate.tables import TableInfo, describe
from livemigrate.transform import Transformer, load_transform

log = logging.getLogger(__name__)

WITHOUT_CONSUMER_RISK = (
    "live writes made to the source before the stream consumer starts are LOST: the backfill "
    "may copy an item before it changes, and without the consumer that change never reaches "
    "the destination"
)


def open_for_backfill(
    settings: Settings, clients: AwsClients, *, create_destination: bool, without_consumer: bool
) -> Migration:
    """All preflight checks, then the migration (recorded in the control table)."""
    if not create_destination:
        _require_destination(settings, clients)
    migration = open_migration(settings, clients, create_destination=create_destination)
    if migration.consumer_started() is None:
        if not without_consumer:
            raise PreflightError(
                f"no stream consumer has started for migration {settings.migration_id!r}; "
                "a backfill without one loses every live write made meanwhile",
                "start it first (livemigrate consume), then run the backfill; or pass "
                f"--without-consumer if you accept that {WITHOUT_CONSUMER_RISK}",
            )
        log.warning("running without a stream consumer: %s", WITHOUT_CONSUMER_RISK)
    return migration


def _require_destination(settings: Settings, clients: AwsClients) -> None:
    try:
        describe(clients.dynamodb, settings.destination_table, "destination")
    except PreflightError as exc:
        raise PreflightError(
            exc.problem,
            "run `livemigrate backfill --create-destination` to create it with the source's key "
            "schema (on-demand, with a NEW_AND_OLD_IMAGES stream), create it yourself, or set "
            "LIVEMIGRATE_DESTINATION_TABLE to an existing table",
        ) from exc


def dry_run(settings: Settings, clients: AwsClients, sample: int, out: TextIO) -> int:
    """Transform a few source items and print them before/after; writes nothing anywhere."""
    source = describe(clients.dynamodb, settings.source_table, "source")
    target = _destination_or_source(settings, clients, source, out)
    _check_owner(settings, clients)
    transformer = Transformer(
        load_transform(settings.transform), target.key_names, target.key_types
    )
    page = clients.dynamodb.scan(TableName=source.name, Limit=sample)
    items = page.get("Items", [])
    show_sample(transformer, items, out)
    print(
        f"dry run: transformed {len(items)} sample item(s) of {source.name!r} "
        f"(~{source.item_count} items); nothing was written",
        file=out,
    )
    return 0


def dry_run_transformer(settings: Settings, clients: AwsClients, out: TextIO) -> Transformer:
    """The transform checked against the destination's key schema (or the source's, with a
    note, when the destination does not exist yet); refuses another migration's destination."""
    source = describe(clients.dynamodb, settings.source_table, "source")
    target = _destination_or_source(settings, clients, source, out)
    _check_owner(settings, clients)
    return Transformer(load_transform(settings.transform), target.key_names, target.key_types)


def show_sample(transformer: Transformer, items: list[TypedItem], out: TextIO) -> None:
    """Each item before and after the transform (or why it would be dead-lettered)."""
    for n, raw in enumerate(items, 1):
        plain = to_plain(raw)
        print(f"--- item {n} before: {to_json(plain)}", file=out)
        try:
            outputs = transformer.run(plain)
        except TransformOutputError as exc:
            print(f"    would be dead-lettered: {exc.reason}", file=out)
            continue
        if not outputs:
            print("    after: (no destination items)", file=out)
        for typed in outputs:
            print(f"    after: {to_json(to_plain(typed))}", file=out)


def _destination_or_source(
    settings: Settings, clients: AwsClients, source: TableInfo, out: TextIO
) -> TableInfo:
    try:
        return describe(clients.dynamodb, settings.destination_table, "destination")
    except PreflightError:
        print(
            f"note: destination table {settings.destination_table!r} does not exist; outputs "
            "are checked against the source's key schema (a real run needs "
            "--create-destination)",
            file=out,
        )
        return source


def _check_owner(settings: Settings, clients: AwsClients) -> None:
    store = ControlStore(clients.dynamodb, settings.control_table, settings.migration_id)
    if not store.exists():
        return
    owner = store.destination_owner(settings.destination_table)
    if owner not in (None, settings.migration_id):
        raise ConflictError(
            f"destination table {settings.destination_table!r} already belongs to migration "
            f"{owner!r}",
            "use a different destination table, or finish/clean up the other migration",
        )
