"""The reverse consumer (``livemigrate reverse``, its wiring in ``stream_consumer.reverse_cli``):
keep the source current after the cutover (rollback loses nothing).

The reverse consumer is the stream consumer engine under the name ``reverse``, reading the
destination's stream and applying ``inverse(NewImage)`` to the source with the same version
rule (its own stamp, ``_lm_rseq``) and the mark-then-delete of ``livemigrate.replication``.
Records the forward consumer made (the backfill, every forward write and delete) are echoes and
skipped: everything the destination's stream holds from before the cutover made it the active
table, by time, and later forward writes by their stamps and delete marks
(``livemigrate.replication``); only what the application writes to the destination reaches the
source. After a rollback the destination is retired: its late changes are counted, not applied
(``livemigrate.retired``). Start it before the cutover: a new reverse consumer starts at the
destination stream's trim horizon, so no write after the flip is missed, and ``cutover`` checks
it is running.

Before anything is read: the destination has a NEW_AND_OLD_IMAGES stream, the inverse imports,
and on a sample of source items ``inverse(transform(item))`` gives the item back (a lossy
transform would make every reverse write drop data).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from livemigrate.aws import AwsClients
from livemigrate.clock import Clock, SystemClock
from livemigrate.config import Settings
from livemigrate.destination import DestinationWriter
from livemigrate.errors import ConfigError, PreflightError, TransformOutputError
from livemigrate.flag import ControlFlagStore, FlagView
from livemigrate.items import TypedItem, key_id, to_plain
from livemigrate.keys import META
from livemigrate.migration import Migration, open_migration
from livemigrate.replication import FORWARD, REVERSE
from livemigrate.retired import RetiredTable
from livemigrate.tables import describe, require_stream
from livemigrate.transform import Transformer, load_transform
from livemigrate.values import canonical_bytes
from livemigrate.versioning import user_attributes
from stream_consumer.applier import DeleteMode, DestinationApplier, Removal
from stream_consumer.metrics import Metrics

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

log = logging.getLogger("livemigrate.reverse")

NAME = "reverse"


@dataclass(frozen=True)
class ReverseSetup:
    """What the reverse consumer runs with, every check done."""

    migration: Migration
    stream_arn: str
    inverse: Transformer
    writer: DestinationWriter


@dataclass(frozen=True)
class StillMapsGuard:
    """Remove a source item only while it still maps to the destination key that went away.

    An application that moves an item between destination keys (another month shard: put the
    new key, delete the old) makes two records, on any shards and in either order, that both
    map back to one source key. The delete of the old key must not remove the source item the
    put of the new key wrote: the item is read (consistently) and its transform checked; the
    delete then requires the stamp read, so a write in between keeps the item.
    """

    client: DynamoDBClient
    table: str
    forward: Transformer
    destination_keys: tuple[str, ...]

    def __call__(self, key: TypedItem, origin: TypedItem) -> Removal:
        got = self.client.get_item(TableName=self.table, Key=dict(key), ConsistentRead=True)
        item = got.get("Item")
        if item is None:
            return Removal(proceed=True)  # nothing held: the delete finds nothing to do
        held = item.get(REVERSE.seq_attr, {}).get("S")
        try:
            outputs = self.forward.run(to_plain(item))
        except TransformOutputError:
            return Removal(proceed=True, held=held)  # never in the destination: no other key
        removed = key_id({name: origin[name] for name in self.destination_keys})
        mapped = {key_id({name: out[name] for name in self.destination_keys}) for out in outputs}
        return Removal(proceed=removed in mapped, held=held)


def inverse_spec(settings: Settings, given: str | None) -> str:
    spec = given or settings.inverse_transform
    if not spec:
        raise ConfigError(
            "no inverse transform is configured: the reverse consumer needs one to write "
            "destination items back in the source's schema",
            "pass --inverse-transform pkg.mod:fn or set LIVEMIGRATE_INVERSE_TRANSFORM",
        )
    return spec


def open_reverse(
    settings: Settings, clients: AwsClients, spec: str, *, sample: int = 25
) -> ReverseSetup:
    """Check everything the reverse consumer needs; raises before anything is written."""
    source = describe(clients.dynamodb, settings.source_table, "source")
    destination = describe(clients.dynamodb, settings.destination_table, "destination")
    stream_arn = require_stream(destination)
    inverse = Transformer(load_transform(spec), source.key_names, source.key_types)
    forward = Transformer(
        load_transform(settings.transform), destination.key_names, destination.key_types
    )
    check_round_trip(clients.dynamodb, source.name, forward, inverse, sample)
    migration = open_migration(settings, clients)  # the same checks, then records the migration
    migration.store.update(META, {"inverse_transform": spec})
    writer = DestinationWriter(
        clients.dynamodb, source.name, source.key_names, settings.migration_id, marks=REVERSE
    )
    return ReverseSetup(migration, stream_arn, inverse, writer)


def check_round_trip(
    client: DynamoDBClient, table: str, forward: Transformer, inverse: Transformer, sample: int
) -> int:
    """Refuse an inverse that does not give a sample of source items back; items checked."""
    if sample <= 0:
        return 0
    checked = 0
    for raw in client.scan(TableName=table, Limit=sample).get("Items", []):
        try:
            outputs = forward.run(to_plain(raw))
        except TransformOutputError:
            continue  # never reached the destination: the forward consumer dead-letters it
        for out in outputs:
            _check_one(raw, out, inverse)
        checked += 1
    return checked


def _check_one(original: TypedItem, out: TypedItem, inverse: Transformer) -> None:
    where = f"source item {key_id({k: original[k] for k in inverse.key_names})}"
    fix = "fix the inverse transform so that inverse(transform(item)) == item"
    try:
        back = inverse.run(to_plain(out))
    except TransformOutputError as exc:
        raise PreflightError(f"the inverse transform fails on {where}: {exc.reason}", fix) from exc
    if [canonical_bytes(item) for item in back] != [canonical_bytes(original)]:
        raise PreflightError(
            f"the inverse transform does not give {where} back: {_difference(original, back)}; "
            "the reverse consumer would write that into the source",
            fix + " (or pass --round-trip-sample 0 if the difference is intended)",
        )


def _difference(original: TypedItem, back: list[TypedItem]) -> str:
    if len(back) != 1:
        return f"it returned {len(back)} items instead of 1"
    want = user_attributes(original)
    got = back[0]
    lost = sorted(set(want) - set(got))
    added = sorted(set(got) - set(want))
    changed = sorted(
        k
        for k in set(want) & set(got)
        if canonical_bytes({k: want[k]}) != canonical_bytes({k: got[k]})
    )
    parts = [
        f"{label} {names}"
        for label, names in (("lost", lost), ("added", added), ("changed", changed))
        if names
    ]
    return ", ".join(parts)


def build_applier(
    setup: ReverseSetup, clients: AwsClients, clock: Clock, metrics: Metrics, threads: int
) -> DestinationApplier:
    """The reverse consumer's applier (the CLI's engine and the Lambda handler share it)."""
    store = setup.migration.store
    # Nothing writes the source in bulk behind the reverse consumer: deletes are real at once.
    mode = DeleteMode(lambda: True, store, NAME, clock)
    return DestinationApplier(
        setup.inverse,
        setup.writer,
        mode,
        metrics,
        threads=threads,
        echo_of=FORWARD,
        guard=StillMapsGuard(
            clients.dynamodb,
            setup.migration.source.name,
            setup.migration.transformer,
            setup.migration.destination.key_names,
        ),
        # After a rollback the destination is retired: its late changes stay there (rule 13).
        retired=RetiredTable(
            FlagView(
                ControlFlagStore(
                    store, setup.migration.source.name, setup.migration.destination.name
                ),
                clock,
            ),
            "destination",
            store,
            NAME,
        ),
    )


def lambda_applier(setup: ReverseSetup, clients: AwsClients) -> DestinationApplier:
    """The applier for ``stream_consumer.lambda_handler.reverse_handler``."""
    return build_applier(setup, clients, SystemClock(), Metrics(NAME), threads=8)
