"""AWS Lambda handlers for DynamoDB Streams event source mappings (same apply code as the
engines; ``infra/aws/livemigrate.yaml`` wires them).

- ``handler``: the forward consumer on the source table's stream.
- ``search_handler``: the search sink on the destination table's stream.
- ``reverse_handler``: the reverse consumer (destination stream -> source), optional.

Configure each mapping with ``FunctionResponseTypes: [ReportBatchItemFailures]``. Records of a
batch are applied in order; a record that cannot be valid (a transform failure) is dead-lettered
and the batch goes on (rule 6); any other failure stops the batch there and reports that record
and every later one as failed (their ``SequenceNumber``), so Lambda retries from it and order
holds.

The forward handler reports itself in ``CONSUMER#source`` with ``mode: lambda`` (its lag at the
last batch) and reports each cutover watermark once everything before it is applied
(``livemigrate.lambda_mode``): with an event source mapping no invocation happens without a
write, so that is how the cutover proves the drain.

Settings come from the function's environment (``LIVEMIGRATE_*``), read once per container.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from livemigrate import lambda_mode
from livemigrate.control import ControlStore
from livemigrate.deadletters import DeadLetters, Origin
from livemigrate.fencing import WindowClosed
from livemigrate.keys import CONSUMER_SOURCE
from livemigrate.lambda_mode import MODE, watermark_of
from livemigrate.records import ApplyFailure, RecordSink, StreamRecord
from stream_consumer.engine import json_safe_record

_STATE: dict[str, Any] = {}
# Set by the template from its ParallelizationFactor parameter (the drain proof needs 1).
PARALLELIZATION_VARIABLE = "LIVEMIGRATE_PARALLELIZATION_FACTOR"

Response = dict[str, Any]


@dataclass(frozen=True)
class _Batch:
    """One event's records and where they go."""

    records: list[StreamRecord]
    sink: RecordSink
    dead_letters: DeadLetters
    origin: Origin

    def apply(self, start: int, stop: int) -> int | None:
        """Apply ``records[start:stop]`` in order; the index of the first record not applied."""
        while start < stop:
            try:
                self.sink.apply(self.records[start:stop])
            except WindowClosed:
                continue  # the tombstone decision got too old: apply again with a fresh one
            except ApplyFailure as failure:
                at = start + failure.index
                if failure.retryable:
                    return at
                record = self.records[at]
                self.dead_letters.add(
                    self.origin, failure.reason, json_safe_record(record), record.keys
                )
                start = at + 1
                continue
            break
        return None

    def next_watermark(self, start: int) -> int:
        """The index of the first watermark record at or after ``start`` (or the end)."""
        while start < len(self.records) and not watermark_of(self.records[start])[0]:
            start += 1
        return start


def handle(
    event: Mapping[str, Any],
    sink: RecordSink,
    dead_letters: DeadLetters,
    origin: Origin = "stream",
    on_watermark: Callable[[str], None] | None = None,
) -> Response:
    """Apply one event's records; the ``batchItemFailures`` response.

    Watermark records (``livemigrate.lambda_mode``) are never applied; ``on_watermark`` gets
    the token of each once every record before it in the batch is applied.
    """
    raws = list(event.get("Records", []))
    batch = _Batch([StreamRecord.from_boto(raw) for raw in raws], sink, dead_letters, origin)
    start = 0
    while start < len(raws):
        stop = batch.next_watermark(start)
        failed = batch.apply(start, stop)
        if failed is not None:
            return _failures(raws[failed:])
        if stop < len(raws):
            token = watermark_of(batch.records[stop])[1]
            if token is not None and on_watermark is not None:
                on_watermark(token)
        start = stop + 1
    return {"batchItemFailures": []}


def _failures(raws: Sequence[Mapping[str, Any]]) -> Response:
    return {
        "batchItemFailures": [
            {"itemIdentifier": str(raw["dynamodb"]["SequenceNumber"])} for raw in raws
        ]
    }


def report(store: ControlStore, event: Mapping[str, Any], now: float) -> None:
    """The forward consumer's heartbeat in Lambda mode: its lag at the end of this batch."""
    records = event.get("Records", [])
    fields: dict[str, Any] = {
        "mode": MODE,
        "heartbeat_at": now,
        "parallelization_factor": int(os.environ.get(PARALLELIZATION_VARIABLE, "1") or 1),
    }
    if records:
        last = StreamRecord.from_boto(records[-1])
        fields["lag_seconds"] = max(0.0, now - last.approximate_creation)
    store.update(CONSUMER_SOURCE, fields)


def forward(event: Mapping[str, Any], state: Mapping[str, Any]) -> Response:
    """The forward consumer's work on one event with its built state (tests call this)."""
    store: ControlStore = state["store"]
    response = handle(
        event,
        state["sink"],
        state["dead_letters"],
        on_watermark=lambda token: lambda_mode.report_seen(store, token, time.time()),
    )
    if not response["batchItemFailures"]:
        report(store, event, time.time())
    return response


def forward_state() -> dict[str, Any]:
    """Settings, clients and the applier of the forward consumer (once per container)."""
    from livemigrate.aws import make_clients
    from livemigrate.config import load_settings
    from livemigrate.migration import open_migration
    from stream_consumer.applier import DestinationApplier
    from stream_consumer.metrics import Metrics

    settings = load_settings()
    migration = open_migration(settings, make_clients(settings))
    # The backfill refuses to start before a consumer has (rule 9): the mapping counts.
    migration.store.put(
        CONSUMER_SOURCE,
        {
            "stream_arn": migration.source.stream_arn,
            "start_position": "event source mapping (its own starting position)",
            "started_at": time.time(),
            "mode": MODE,
        },
        only_if_absent=True,
    )
    return {
        "sink": DestinationApplier.for_migration(migration, Metrics("source")),
        "dead_letters": migration.dead_letters,
        "store": migration.store,
    }


def handler(event: Mapping[str, Any], context: object) -> Response:
    """The Lambda entry point (``stream_consumer.lambda_handler.handler``)."""
    if "forward" not in _STATE:
        _STATE["forward"] = forward_state()
    return forward(event, _STATE["forward"])


def search_state() -> dict[str, Any]:
    """The search sink on the destination's stream (the code ``livemigrate search sync`` runs)."""
    from livemigrate.aws import make_clients
    from livemigrate.config import load_settings
    from livemigrate.search.clients import open_backend
    from livemigrate.search.documents import load_hook
    from livemigrate.search.indices import live_index, load_index_config
    from livemigrate.search.sink import Indexing, SearchSink
    from livemigrate.search.targets import ControlTargets

    settings = load_settings()
    if not settings.search_url or not settings.search_alias:
        raise ValueError("the search function needs LIVEMIGRATE_SEARCH_URL and _SEARCH_ALIAS")
    clients = make_clients(settings)
    store = ControlStore(clients.dynamodb, settings.control_table, settings.migration_id)
    backend = open_backend(settings, check=False)  # the engine, auth and timeout the settings name
    targets = ControlTargets(store, live_index(settings.search_alias, settings.migration_id))
    config = load_index_config(settings.search_index_config)
    backend.create_index(targets.current().indices[0], config.settings, config.mappings)
    dead_letters = DeadLetters(store)
    indexing = Indexing(hook=load_hook(settings.search_document_hook))
    sink = SearchSink(backend, targets, dead_letters, indexing)
    return {"sink": sink, "dead_letters": dead_letters}


def search_handler(event: Mapping[str, Any], context: object) -> Response:
    """The search sync's entry point (``stream_consumer.lambda_handler.search_handler``)."""
    if "search" not in _STATE:
        _STATE["search"] = search_state()
    state = _STATE["search"]
    return handle(event, state["sink"], state["dead_letters"], origin="search")


def reverse_state() -> dict[str, Any]:
    """The reverse consumer's applier (the code ``livemigrate reverse`` runs)."""
    from livemigrate.aws import make_clients
    from livemigrate.config import load_settings
    from stream_consumer.reverse import inverse_spec, lambda_applier, open_reverse

    settings = load_settings()
    clients = make_clients(settings)
    setup = open_reverse(settings, clients, inverse_spec(settings, None), sample=0)
    return {
        "sink": lambda_applier(setup, clients),
        "dead_letters": setup.migration.dead_letters,
    }


def reverse_handler(event: Mapping[str, Any], context: object) -> Response:
    """The reverse consumer's entry point (``stream_consumer.lambda_handler.reverse_handler``)."""
    if "reverse" not in _STATE:
        _STATE["reverse"] = reverse_state()
    state = _STATE["reverse"]
    return handle(event, state["sink"], state["dead_letters"], origin="reverse")
