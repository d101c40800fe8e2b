"""moto's server, with two emulator bugs fixed: cancelled transactions, lost first writes.

1. Cancelled DynamoDB transactions.

moto's ``TransactWriteItems`` deep-copies every table a transaction names before it starts, and
when the transaction is cancelled (a failed condition) it puts those copies in place of the live
tables. DynamoDB does nothing of the kind: a cancelled transaction changes nothing. The copies
cost a full copy of each named table per transaction, writes made to those tables by other
requests meanwhile are thrown away, and a table's stream is replaced by a copy, so every open
shard iterator keeps reading a stream that no longer grows (seen: the forward consumer stopped
receiving records for good after the application's first checked write lost a race with the
flag).

The fix, applied before the server starts: every condition of a transaction is evaluated first,
under one lock, against the live items (no two actions of a transaction may touch one item, so
each condition sees exactly what the sequential evaluation would); a failed condition cancels
the transaction before anything is copied or written, with the same cancellation reasons moto
gives. Only a transaction that passes them runs moto's own code, which then copies nothing.

2. Concurrent first writes to a partition. A table keeps its items in a ``defaultdict`` of
partitions; the partition for a new hash key is created on first access, and that creation
calls the key's Python ``__hash__``, so threads can interleave inside it: two requests touching
a new partition at once (two puts, or a put and a get) each create one, the last assignment
wins, and the other request's item is gone although it was acknowledged (seen: a backfill
reported 120 items written, the destination held 119). DynamoDB loses no acknowledged write.
The fix creates a missing partition under a lock, once.

3. Writes that are not atomic. moto's PutItem, UpdateItem and DeleteItem read the item, check
the condition and write in separate steps, unlocked, and a transaction's checked conditions
can change before its writes: two concurrent ADDs to one counter lose one (seen: a backfill's
METRICS said 23 items read of 30), and a checked write can pass its flag condition while the
fence's update of the flag lands before the write (seen: a write begun after the fence landed
on the retired table). DynamoDB applies each of these atomically. The fix runs every write
operation, and a transaction from its condition checks to its last write, under one lock.

Usage: ``python infra/moto_server.py -H 127.0.0.1 -p 4599`` (the same arguments as moto_server).
"""

from __future__ import annotations

import copy
import sys
import threading
import types
from collections import defaultdict
from typing import Any

from moto.dynamodb import models
from moto.dynamodb.exceptions import TransactionCanceledException
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.table import Table

_LOCK = threading.RLock()
_PARTITION_LOCK = threading.Lock()
_ORIGINAL = DynamoDBBackend.transact_write_items


def _failed_condition(backend: DynamoDBBackend, op_type: str, op: dict[str, Any]) -> Any:
    """(code, message, item) of one action's failed condition, or None when it holds."""
    condition = op.get("ConditionExpression")
    if condition is None:
        return None
    table = backend.get_table(op["TableName"])
    if op_type == "Put":
        key = {table.hash_key_attr: op["Item"][table.hash_key_attr]}
        if table.range_key_attr is not None:
            key[table.range_key_attr] = op["Item"][table.range_key_attr]
    else:
        key = op["Key"]
    current = backend.get_item(op["TableName"], key)
    check = models.get_filter_expression(
        condition, op.get("ExpressionAttributeNames"), op.get("ExpressionAttributeValues")
    )
    if check.expr(current):
        return None
    item = None
    if op.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD" and current:
        item = current.to_json()["Attributes"]
    return ("ConditionalCheckFailed", "The conditional request failed", item)


def transact_write_items(self: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
    with _LOCK:
        errors: list[Any] = []
        for action in transact_items:
            (op_type, op), *_ = action.items()
            try:
                errors.append(_failed_condition(self, op_type, op) or (None, None, None))
            except Exception:  # noqa: BLE001 - moto's own code reports malformed actions
                errors.append((None, None, None))
        if any(code is not None for code, _, _ in errors):
            raise TransactionCanceledException(errors)
        _ORIGINAL(self, transact_items)


def _no_table_copies() -> types.SimpleNamespace:
    """``copy`` for moto's DynamoDB module: a table is not copied (see the module docstring),
    anything else is."""

    def deepcopy(value: Any, memo: Any = None) -> Any:
        return value if isinstance(value, Table) else copy.deepcopy(value, memo)

    return types.SimpleNamespace(deepcopy=deepcopy, copy=copy.copy)


class Partitions(defaultdict[Any, Any]):
    """``Table.items`` whose missing partition is created exactly once, whatever the threads."""

    def __missing__(self, key: Any) -> Any:
        assert self.default_factory is not None
        with _PARTITION_LOCK:
            # Another thread may have created it since this one's lookup missed.
            return self.setdefault(key, self.default_factory())


_TABLE_INIT = Table.__init__


def _table_init(self: Table, *args: Any, **kwargs: Any) -> None:
    _TABLE_INIT(self, *args, **kwargs)
    if isinstance(self.items, defaultdict):
        self.items = Partitions(self.items.default_factory, self.items)


def _atomic(method: Any) -> Any:
    """``method`` run under the lock the transactions take (reentrant: moto's transactions
    call these methods themselves)."""

    def locked(self: DynamoDBBackend, *args: Any, **kwargs: Any) -> Any:
        with _LOCK:
            return method(self, *args, **kwargs)

    return locked


def patch() -> None:
    for name in ("put_item", "update_item", "delete_item"):
        setattr(DynamoDBBackend, name, _atomic(getattr(DynamoDBBackend, name)))
    DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]
    models.copy = _no_table_copies()  # type: ignore[assignment]
    Table.__init__ = _table_init  # type: ignore[method-assign]


def main() -> None:
    patch()
    from moto.server import main as server_main

    server_main(sys.argv[1:])


if __name__ == "__main__":
    main()
