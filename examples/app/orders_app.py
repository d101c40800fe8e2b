"""A tiny application that follows the livemigrate cutover flag.

It records orders and reads them back. It never names a table itself: reads ask
``active.active_table()`` (cached for ``--ttl`` seconds) and writes go through
``active.write(...)``, which waits while ``livemigrate cutover --fenced`` holds writers and
then writes to whichever table is active. Run it beside a migration::

    AWS_ENDPOINT_URL=http://127.0.0.1:4599 python examples/app/orders_app.py \\
        --migration-id orders-v2 --control-table livemigrate-control --orders 1000

and run ``livemigrate cutover --fenced`` in another shell: the app pauses briefly and carries
on against the new table.
"""

from __future__ import annotations

import argparse
import time
from decimal import Decimal
from typing import Any

import boto3

from livemigrate.client import ActiveTable
from livemigrate.examples.hot_outbox import transform
from livemigrate.items import to_typed


def record_order(dynamodb: Any, active: ActiveTable, section: str, number: int) -> str:
    """Write one order to the active table; returns the table it went to."""
    order = {
        "pk": f"section-outbox|{section}",
        "sk": f"order-{number:06d}",
        "createdAt": Decimal(int(time.time())),
        "status": "new",
    }

    def put(table: str) -> str:
        # After the cutover the application speaks the new schema (the migration's transform
        # is exactly that mapping); before it, the old one.
        new_schema = table == active.flag().destination_table
        item = next(iter(transform(order))) if new_schema else order
        dynamodb.put_item(TableName=table, Item=to_typed(item))
        return table

    return active.write(put)


def read_order(dynamodb: Any, active: ActiveTable, key: dict[str, Any]) -> dict[str, Any] | None:
    """Read from whichever table is active now (at most ``ttl`` seconds stale)."""
    resp = dynamodb.get_item(TableName=active.active_table(), Key=key)
    item: dict[str, Any] | None = resp.get("Item")
    return item


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--migration-id", required=True)
    parser.add_argument("--control-table", default="livemigrate-control")
    parser.add_argument("--orders", type=int, default=100)
    parser.add_argument("--section", default="docket")
    parser.add_argument("--ttl", type=float, default=1.0, help="flag cache seconds")
    args = parser.parse_args(argv)
    dynamodb = boto3.client("dynamodb")
    active = ActiveTable.from_control_table(
        dynamodb, args.control_table, args.migration_id, ttl=args.ttl
    )
    used: dict[str, int] = {}
    for number in range(args.orders):
        table = record_order(dynamodb, active, args.section, number)
        used[table] = used.get(table, 0) + 1
    print("orders written per table:", used)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
