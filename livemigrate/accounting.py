"""Request accounting: what the tool's DynamoDB requests cost, per table role and operation.

On AWS a migration is paid per request unit and bounded by table capacity (issue 18), so the
tool counts, for every DynamoDB request its clients send, the request and the capacity units
DynamoDB would charge for it. ``install(client)`` registers botocore ``after-call`` hooks on a
client (as ``livemigrate.fencing.install`` does for fences); ``Accounting`` keeps per-process
totals keyed by table and operation; a ``Ledger`` names a migration's tables (source,
destination, control) and hands its unsent deltas to a control-table write that happens anyway
(a backfill unit's checkpoint at most every 10 s, a run's last ``ControlStore.add_metrics``,
the consumer's heartbeat), so counting adds no request of its own.

Units are **computed from item sizes by DynamoDB's published rules**, not taken from the
server's ``ConsumedCapacity`` (moto does not compute it; requesting it would change what is
sent): an item's size is the UTF-8 length of its attribute names plus the size of its values
(strings: UTF-8 bytes; numbers: 1 byte per two significant digits plus 1; binary: bytes;
booleans and null: 1; lists and maps: 3 plus 1 per element plus their contents; sets: their
elements). Then

- reads: the sizes summed per request (GetItem, Query, Scan), rounded up to 4 KB, at least one
  unit; half of that for an eventually consistent read;
- writes: per item, rounded up to 1 KB, at least one unit; twice that in a transaction;
- a write whose condition failed is charged like one that succeeded (DynamoDB does);
- approximations, stated: an UpdateItem without returned attributes and a DeleteItem are
  charged by the size of what the request carries (key and new values; DynamoDB charges the
  larger of the old and the new item); a Query or Scan with a projection or ``Select=COUNT`` is
  charged by what it returned (DynamoDB charges the full items it read); a ConditionCheck in a
  transaction is charged as a transactional write of its key. Requests that fail otherwise
  (throttled, validation) are counted as requests with no units.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final, Literal

from livemigrate.items import item_size, value_size

Role = Literal["source", "destination", "control"]
ROLES: Final[tuple[Role, ...]] = ("source", "destination", "control")
# Counter attributes in the control table: cost.<role>.<Operation>.<field>
PREFIX: Final = "cost."
FIELDS: Final = ("requests", "read_units", "write_units")

READ_UNIT = 4096
WRITE_UNIT = 1024
CONDITION_FAILED = "ConditionalCheckFailedException"

# Operations that read or write items; control-plane calls (DescribeTable, ...) are free.
READS: Final = frozenset({"GetItem", "Query", "Scan", "BatchGetItem", "TransactGetItems"})
WRITES: Final = frozenset(
    {"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"}
)

_ITEM_OPERATIONS: Final = READS | WRITES


@dataclass
class Usage:
    """Requests and capacity units of one table and operation."""

    requests: float = 0
    read_units: float = 0.0
    write_units: float = 0.0

    def add(self, other: Usage) -> None:
        self.requests += other.requests
        self.read_units += other.read_units
        self.write_units += other.write_units

    def as_dict(self) -> dict[str, float]:
        return {
            "requests": self.requests,
            "read_units": self.read_units,
            "write_units": self.write_units,
        }


Key = tuple[str, str]  # (table, operation)


class Accounting:
    """Per-process request totals by (table, operation); thread-safe.

    ``totals`` only grows; ``unsent`` holds what no control-table write has carried yet.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals: dict[Key, Usage] = {}
        self._unsent: dict[Key, Usage] = {}

    def record(self, table: str, operation: str, usage: Usage) -> None:
        key = (table, operation)
        with self._lock:  # every request is recorded: no Usage is built for a held key
            for book in (self._totals, self._unsent):
                held = book.get(key)
                if held is None:
                    book[key] = held = Usage()
                held.add(usage)

    def totals(self) -> dict[Key, Usage]:
        """A copy of the totals since the process started."""
        with self._lock:
            return {k: Usage(**v.as_dict()) for k, v in self._totals.items()}

    def take(self, tables: Mapping[str, Role]) -> dict[Key, Usage]:
        """Remove and return the unsent usage of ``tables``."""
        with self._lock:
            taken = {k: v for k, v in self._unsent.items() if k[0] in tables}
            for key in taken:
                del self._unsent[key]
            return taken

    def give_back(self, taken: Mapping[Key, Usage]) -> None:
        """The write that was to carry ``taken`` failed: it goes with the next one."""
        with self._lock:
            for key, usage in taken.items():
                self._unsent.setdefault(key, Usage()).add(usage)


@dataclass(frozen=True)
class Ledger:
    """One migration's view of the process's accounting: its tables and their roles."""

    accounting: Accounting
    tables: Mapping[str, Role]

    @contextmanager
    def unsent(self) -> Iterator[dict[str, float]]:
        """Counter deltas (``cost.<role>.<op>.<field>``) for a control-table write to ADD;
        given back if the block raises, so nothing is counted twice or lost."""
        taken = self.accounting.take(self.tables)
        try:
            yield flatten(taken, self.tables)
        except BaseException:
            self.accounting.give_back(taken)
            raise

    def by_role(self) -> dict[str, dict[str, dict[str, float]]]:
        """This process's totals as ``{role: {operation: usage}}``."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for (table, op), usage in self.accounting.totals().items():
            role = self.tables.get(table)
            if role is None:
                continue
            slot = out.setdefault(role, {}).setdefault(op, Usage().as_dict())
            for name, value in usage.as_dict().items():
                slot[name] += value
        return out


def flatten(taken: Mapping[Key, Usage], tables: Mapping[str, Role]) -> dict[str, float]:
    out: dict[str, float] = {}
    for (table, op), usage in taken.items():
        for name, value in usage.as_dict().items():
            if value:
                attr = f"{PREFIX}{tables[table]}.{op}.{name}"
                out[attr] = out.get(attr, 0) + value
    return out


def unflatten(counters: Mapping[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """``cost.*`` attributes (of any number of control-table items, summed) as
    ``{role: {operation: {requests, read_units, write_units}}}``."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, value in counters.items():
        if not name.startswith(PREFIX) or name.count(".") != 3:
            continue
        _, role, op, field = name.split(".")
        if field not in FIELDS:
            continue
        slot = out.setdefault(role, {}).setdefault(op, dict.fromkeys(FIELDS, 0.0))
        slot[field] += float(value)
    return out


def read_units(size: int, consistent: bool) -> float:
    units = max(1, math.ceil(size / READ_UNIT))
    return float(units) if consistent else units / 2


def write_units(size: int) -> float:
    return float(max(1, math.ceil(size / WRITE_UNIT)))


# -- what one request cost --------------------------------------------------------------------
def charge(
    operation: str, params: Mapping[str, Any], parsed: Mapping[str, Any], ok: bool
) -> dict[str, Usage]:
    """Usage per table of one request (``ok``: it succeeded or only its condition failed)."""
    table = str(params.get("TableName", ""))
    if operation not in _ITEM_OPERATIONS:
        return {table: Usage(requests=1)} if table else {}
    if operation == "BatchWriteItem":
        return _batch_write(params, parsed, ok)
    if operation == "TransactWriteItems":
        return _transact_write(params, ok)
    if operation in {"BatchGetItem", "TransactGetItems"}:
        return {t: Usage(requests=1) for t in _tables_of(params)}
    if not ok:
        return {table: Usage(requests=1)}
    if operation in READS:
        return {table: Usage(1, read_units=_read_units(operation, params, parsed))}
    return {table: Usage(1, write_units=write_units(_written_size(operation, params, parsed)))}


def _read_units(operation: str, params: Mapping[str, Any], parsed: Mapping[str, Any]) -> float:
    if operation == "GetItem":
        items = [parsed["Item"]] if "Item" in parsed else []
    else:
        items = list(parsed.get("Items", []))
    size = sum(item_size(i) for i in items)
    return read_units(size, bool(params.get("ConsistentRead")))


def _written_size(operation: str, params: Mapping[str, Any], parsed: Mapping[str, Any]) -> int:
    if operation == "PutItem":
        return item_size(params["Item"])
    if (
        operation == "UpdateItem"
        and parsed.get("Attributes")
        and params.get("ReturnValues")
        in (
            "ALL_NEW",
            "ALL_OLD",
        )
    ):
        return item_size(parsed["Attributes"])
    carried = item_size(params.get("Key", {}))
    values = params.get("ExpressionAttributeValues", {})
    return carried + sum(value_size(v) for v in values.values())


def _batch_write(
    params: Mapping[str, Any], parsed: Mapping[str, Any], ok: bool
) -> dict[str, Usage]:
    out: dict[str, Usage] = {}
    unprocessed = parsed.get("UnprocessedItems") or {}
    for table, requests in (params.get("RequestItems") or {}).items():
        usage = out.setdefault(table, Usage(requests=1))
        if not ok:
            continue
        left = len(unprocessed.get(table, []))
        for request in requests[: len(requests) - left]:
            if "PutRequest" in request:
                usage.write_units += write_units(item_size(request["PutRequest"]["Item"]))
            else:
                usage.write_units += write_units(item_size(request["DeleteRequest"]["Key"]))
    return out


def _transact_write(params: Mapping[str, Any], ok: bool) -> dict[str, Usage]:
    out: dict[str, Usage] = {}
    for action in params.get("TransactItems", []):
        body = next(iter(action.values()))
        usage = out.setdefault(str(body["TableName"]), Usage(requests=1))
        if not ok:
            continue
        carried = body.get("Item") or body.get("Key") or {}
        usage.write_units += 2 * write_units(item_size(carried))
    return out


def _tables_of(params: Mapping[str, Any]) -> list[str]:
    if "RequestItems" in params:
        return [str(t) for t in params["RequestItems"]]
    return sorted({str(next(iter(a.values()))["TableName"]) for a in params["TransactItems"]})


# -- botocore hooks ---------------------------------------------------------------------------
_installed: weakref.WeakKeyDictionary[Any, Accounting] = weakref.WeakKeyDictionary()
_install_lock = threading.Lock()


def install(client: Any) -> Accounting:
    """Count every request of a DynamoDB ``client``; returns the client's ``Accounting``
    (the same one on every call for the same client)."""
    with _install_lock:
        held = _installed.get(client)
        if held is not None:
            return held
        accounting = Accounting()
        client.meta.events.register("before-parameter-build.dynamodb", _remember_params)
        client.meta.events.register("after-call.dynamodb", _Counter(accounting))
        _installed[client] = accounting
        return accounting


_PARAMS = "livemigrate_params"


def _remember_params(params: Mapping[str, Any], context: dict[str, Any], **_: Any) -> None:
    context[_PARAMS] = params


class _Counter:
    def __init__(self, accounting: Accounting) -> None:
        self.accounting = accounting

    def __call__(
        self,
        http_response: Any,
        parsed: Mapping[str, Any],
        model: Any,
        context: Mapping[str, Any],
        **_: Any,
    ) -> None:
        params = context.get(_PARAMS, {})
        status = int(getattr(http_response, "status_code", 200))
        code = (parsed.get("Error") or {}).get("Code")
        ok = status < 300 or code == CONDITION_FAILED
        for table, usage in charge(model.name, params, parsed, ok).items():
            self.accounting.record(table, model.name, usage)
