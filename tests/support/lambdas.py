"""The Lambda handlers' environment, a migration for them, a Lambda context, a failing sink."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from livemigrate.aws import AwsClients
from livemigrate.config import Settings
from livemigrate.items import to_plain, to_typed
from livemigrate.migration import Migration, open_migration
from livemigrate.records import ApplyFailure, RecordSink, StreamRecord
from stream_consumer import lambda_handler
from tests.services import create_table, scan_all, settings_for, unique
from tests.support.backfill import settings_env


def use_function_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The function's environment as the template sets it; a cold container."""
    for name, value in settings_env(settings).items():
        if name.startswith(("LIVEMIGRATE_", "AWS_")):
            monkeypatch.setenv(name, value)
    monkeypatch.setattr(lambda_handler, "_STATE", {})


def new_migration(clients: AwsClients, monkeypatch: pytest.MonkeyPatch) -> Migration:
    """Source and destination with streams, the functions' environment set for them."""
    source, dest = unique("src"), unique("dst")
    create_table(clients.dynamodb, source)
    create_table(clients.dynamodb, dest)
    migration = open_migration(settings_for(source, dest), clients)
    use_function_env(migration.settings, monkeypatch)
    return migration


@dataclass
class FailsOnceAt:
    """The real applier, but the first batch holding ``sk`` fails there (retryably), as a
    throttled destination write would: everything before it is applied, nothing after."""

    inner: RecordSink
    sk: str
    failed: bool = False

    def apply(self, records: Sequence[StreamRecord]) -> None:
        at = next((i for i, r in enumerate(records) if r.keys["sk"]["S"] == self.sk), None)
        if at is None or self.failed:
            self.inner.apply(records)
            return
        self.failed = True
        self.inner.apply(records[:at])
        raise ApplyFailure(at, "destination throttled", retryable=True)


def dest_items(clients: AwsClients, migration: Migration) -> dict[str, dict[str, Any]]:
    items = scan_all(clients.dynamodb, migration.settings.destination_table)
    return {str(i["sk"]["S"]): to_plain(i) for i in items}


def put(clients: AwsClients, table: str, sk: str, n: int) -> None:
    item = {"pk": "section-outbox|docket", "sk": sk, "createdAt": 1704067200, "n": n}
    clients.dynamodb.put_item(TableName=table, Item=to_typed(item))


class Context:
    """A Lambda context with ``remaining`` seconds.

    ``lazy``: the countdown starts at the second question (the handler asks once before its
    preflight and once after planning), so the workers get the same short budget however
    slowly a loaded machine answers the preflight.
    """

    def __init__(self, remaining: float, lazy: bool = False) -> None:
        self.remaining = remaining
        self.asked = 0
        self.deadline = None if lazy else time.monotonic() + remaining

    def get_remaining_time_in_millis(self) -> int:
        self.asked += 1
        if self.deadline is None:
            if self.asked < 2:
                return int(self.remaining * 1000)
            self.deadline = time.monotonic() + self.remaining
        return int((self.deadline - time.monotonic()) * 1000)
