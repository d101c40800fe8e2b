"""The example application writes to whichever table the flag names."""

from __future__ import annotations

import time

import pytest

from examples.app.orders_app import main, read_order
from livemigrate.aws import AwsClients
from livemigrate.client import ActiveTable
from livemigrate.control import ControlStore
from livemigrate.flag import ControlFlagStore
from tests.services import create_table, scan_all, unique


def test_example_app_follows_the_flag(
    clients: AwsClients, capsys: pytest.CaptureFixture[str]
) -> None:
    store = ControlStore(clients.dynamodb, unique("control"), unique("mig"))
    store.ensure_table()
    src, dst = unique("asrc"), unique("adst")
    for name in (src, dst):
        create_table(clients.dynamodb, name, stream=None)
    store.put("META", {"source_table": src, "destination_table": dst})
    args = ["--migration-id", store.migration_id, "--control-table", store.table]

    assert main([*args, "--orders", "2"]) == 0
    assert f"{{'{src}': 2}}" in capsys.readouterr().out
    flags = ControlFlagStore(store)
    flag = flags.read()
    flags.write(flag.flipped("destination", time.time()), flag.epoch)
    assert main([*args, "--orders", "3", "--section", "new"]) == 0
    assert f"{{'{dst}': 3}}" in capsys.readouterr().out
    written = list(scan_all(clients.dynamodb, dst))
    assert len(written) == 3
    # After the flip the application writes the new schema: month-sharded key, created_at.
    (third,) = [item for item in written if item["sk"] == {"S": "order-000002"}]
    assert third["pk"]["S"].startswith("section-outbox|new|20")
    assert "created_at" in third
    assert "createdAt" not in third
    active = ActiveTable(flags)
    key = {"pk": third["pk"], "sk": third["sk"]}
    assert (read_order(clients.dynamodb, active, key) or {})["status"] == {"S": "new"}
