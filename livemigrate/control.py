"""The control table: all state of every migration, so any process anywhere can stop or take over.

One DynamoDB table (default ``livemigrate-control``), key ``pk`` (S) + ``sk`` (S). Items:

==========================  ==========================  =======================================
pk                          sk                          what
==========================  ==========================  =======================================
``MIG#<id>``                ``META``                    migration spec: source_table,
                                                        destination_table, transform, created_at,
                                                        change_source (fixed at the first start),
                                                        inverse_transform (set by reverse)
``MIG#<id>``                ``PLAN``                    backfill plan: state (planned | running
                                                        | complete), total_segments, created_at,
                                                        completed_at, quiet_at (real deletes
                                                        from then on), degraded_at /
                                                        recovered_at / degraded_error (last
                                                        endpoint outage a worker rode out)
``MIG#<id>``                ``SEG#<nnnnnn>``            segment: state (pending | done), lease,
                                                        checkpoint (JSON LastEvaluatedKey),
                                                        items_read, items_written, superseded,
                                                        dead_lettered
``MIG#<id>``                ``SPLIT#<seg>#<n>``         hot-key sub-range of a segment: hot_key,
                                                        range bounds, same lease/checkpoint
``MIG#<id>``                ``EXPORT#<ExportId>``       an export requested by ``export start``:
                                                        export_arn, bucket, prefix, export_time,
                                                        status, item_count (issue 16; an export
                                                        plan's units are SEG# items with file_key,
                                                        backfill/export/plan.py)
``MIG#<id>``                ``RATES``                   read_rate / write_rate caps (items/s),
                                                        changeable while running
``MIG#<id>``                ``CONSUMER#<name>``         a stream consumer (name: source | search
                                                        | reverse): stream_arn, start_position,
                                                        started_at, heartbeat_at, lag_seconds,
                                                        records_behind, read_from (the reads
                                                        behind the report were sent after it),
                                                        real_deletes_since, records_lost_at,
                                                        records_lost_shard, drain_after (a
                                                        cutover asks for a report),
                                                        retired_writes, retired_last_keys,
                                                        retired_last_at (changes of the retired
                                                        table not applied, rule 13)
``MIG#<id>``                ``SHARD#<name>#<shard>``    shard lease: owner, counter, expiry,
                                                        checkpoint (padded sequence number;
                                                        Kinesis: padded Kinesis sequence
                                                        number), parents, finished, stream_arn,
                                                        lag, read_from, behind (drain report),
                                                        caught_up_at (the watermark, rule 15)
``MIG#<id>``                ``TOMBSTONES``              state (active | purged), purged_at,
                                                        purged_count
``MIG#<id>``                ``DLQ#<ts>#<uuid>``         dead letter: origin, reason, key,
                                                        key_typed, input_kind, raw input (zlib,
                                                        DynamoDB JSON), code_hash, resolved,
                                                        acknowledged, ack_reason, last_error
``MIG#<id>``                ``CODE#<host>-<pid>``       transform code a process loaded:
                                                        spec, code_hash, at (dead-letters)
``MIG#<id>``                ``SEARCH``                  search sink targets: live_index,
                                                        building, building_state, alias
``MIG#<id>``                ``CUTOVER``                 last cutover: write_pause, drained,
                                                        search_previous (read by rollback)
``MIG#<id>``                ``ROLLBACK``                last rollback: flipped_at, epoch,
                                                        reverse (lossless), write_pause
``MIG#<id>``                ``VERIFY``                  last verification: passed, at, counts
``MIG#<id>``                ``FLAG``                    cutover flag: active (source |
                                                        destination), table, epoch, fenced,
                                                        fenced_until, flipped_at, frozen_after,
                                                        marks_since, destination_since
``MIG#<id>``                ``METRICS``                 counters (dead letters, ...; the
                                                        backfill's are summed over its units),
                                                        request units: cost.<role>.<op>.<field>
                                                        (also on backfill units)
``DEST#<table>``            ``OWNER``                   which migration writes this destination
==========================  ==========================  =======================================

Claims and leases are single conditional writes ("absent OR expired OR mine").
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from livemigrate import keys
from livemigrate.counters import UNIT_COUNTERS, UNIT_FIELDS, Counter
from livemigrate.errors import ConflictError, LeaseLost
from livemigrate.items import decimalize, to_plain
from livemigrate.items import to_typed as _to_typed

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

    from livemigrate.accounting import Ledger

CONDITION_FAILED = "ConditionalCheckFailedException"
# Held: ours and not expired by the caller's clock (a stale holder's renewal is refused).
HELD = "#lease_owner = :me AND #lease_expires > :now"
_HELD = HELD
# TransactWriteItems takes this many actions: ``create_all``'s limit, and a lease check plus
# ``_TRANSACT_PUTS`` puts.
TRANSACT_ITEMS = 100
_TRANSACT_PUTS = TRANSACT_ITEMS - 1


def _cancelled(exc: ClientError) -> bool:
    """A transaction refused as a whole (a condition failed, or a conflict)."""
    return exc.response.get("Error", {}).get("Code") == "TransactionCanceledException"


def condition_failed(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == CONDITION_FAILED


class ControlStore:
    """Typed access to one migration's items in the control table.

    Parameters
    ----------
    client:
        A DynamoDB client (injected; moto, LocalStack or AWS).
    table_name:
        The control table.
    migration_id:
        Every item this store touches lives under ``MIG#<migration_id>``.
    """

    def __init__(self, client: DynamoDBClient, table_name: str, migration_id: str) -> None:
        self.client = client
        self.table = table_name
        self.migration_id = migration_id
        self.pk = keys.migration_pk(migration_id)
        # Set by open_migration: request-unit deltas ride along with counter writes.
        self.ledger: Ledger | None = None

    # -- table ----------------------------------------------------------------------------
    def ensure_table(self) -> None:
        """Create the control table if it is missing, and wait until it is usable."""
        try:
            self.client.describe_table(TableName=self.table)
            return
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
                raise
        try:
            self.client.create_table(
                TableName=self.table,
                KeySchema=[
                    {"AttributeName": "pk", "KeyType": "HASH"},
                    {"AttributeName": "sk", "KeyType": "RANGE"},
                ],
                AttributeDefinitions=[
                    {"AttributeName": "pk", "AttributeType": "S"},
                    {"AttributeName": "sk", "AttributeType": "S"},
                ],
                BillingMode="PAY_PER_REQUEST",
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceInUseException":
                raise
        self.client.get_waiter("table_exists").wait(
            TableName=self.table, WaiterConfig={"Delay": 1, "MaxAttempts": 120}
        )

    def exists(self) -> bool:
        try:
            self.client.describe_table(TableName=self.table)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                return False
            raise
        return True

    # -- plain item access ----------------------------------------------------------------
    def _key(self, sk: str, pk: str | None = None) -> dict[str, Any]:
        return {"pk": {"S": pk or self.pk}, "sk": {"S": sk}}

    def get(self, sk: str, pk: str | None = None) -> dict[str, Any] | None:
        """One item, read consistently, as a plain dict (without pk/sk), or None."""
        resp = self.client.get_item(
            TableName=self.table, Key=self._key(sk, pk), ConsistentRead=True
        )
        item = resp.get("Item")
        return None if item is None else _strip(to_plain(item))

    def put_or_get(self, sk: str, attrs: Mapping[str, Any]) -> dict[str, Any] | None:
        """Create the item if it is absent (None), else return the one held, in one request."""
        try:
            self.client.put_item(
                TableName=self.table,
                Item=to_typed({**attrs, "pk": self.pk, "sk": sk}),
                ConditionExpression="attribute_not_exists(pk)",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if not condition_failed(exc):
                raise
            response: dict[str, Any] = dict(exc.response)
            return _strip(to_plain(response.get("Item") or {}))
        return None

    def create_all(self, items: Mapping[str, Mapping[str, Any]]) -> dict[str, Any] | None:
        """Create every item of ``items`` (sk -> attributes, at most ``TRANSACT_ITEMS``) in one
        transaction, all or none, where none exists yet.

        Returns None when they were created; else the first item as held, in the same
        request, or ``{}`` when it is absent (another of them exists).
        """
        puts = [
            self._absent_put(sk, attrs, read_held=n == 0)
            for n, (sk, attrs) in enumerate(items.items())
        ]
        try:
            self.client.transact_write_items(TransactItems=puts)  # type: ignore[arg-type]
        except ClientError as exc:
            if not _cancelled(exc):
                raise
            response: dict[str, Any] = dict(exc.response)
            reasons = response.get("CancellationReasons") or [{}]
            first: dict[str, Any] = reasons[0]
            return _strip(to_plain(first.get("Item") or {}))
        return None

    def put(self, sk: str, attrs: Mapping[str, Any], *, only_if_absent: bool = False) -> bool:
        """Write an item; with ``only_if_absent``, False when it already exists."""
        item = to_typed({**attrs, "pk": self.pk, "sk": sk})
        kwargs: dict[str, Any] = {}
        if only_if_absent:
            kwargs["ConditionExpression"] = "attribute_not_exists(pk)"
        try:
            self.client.put_item(TableName=self.table, Item=item, **kwargs)
        except ClientError as exc:
            if condition_failed(exc):
                return False
            raise
        return True

    def update(
        self,
        sk: str,
        set_values: Mapping[str, Any] | None = None,
        *,
        add: Mapping[str, int | float] | None = None,
        remove: tuple[str, ...] = (),
        condition: str | None = None,
        condition_values: Mapping[str, Any] | None = None,
        returns: bool = True,
    ) -> dict[str, Any] | None:
        """SET/ADD/REMOVE attributes; returns the new item (``{}`` when not ``returns``), or
        None if ``condition`` failed.

        In ``condition``, write attribute names as ``#name`` and values as ``:name``. Writes
        whose caller has no use for the item skip it: the server serializes it and the
        client parses it (the METRICS item grows with every counter).
        """
        names, values, expression = _update_expression(set_values or {}, add or {}, remove)
        kwargs: dict[str, Any] = {}
        if condition:
            kwargs["ConditionExpression"] = condition
            for token in _tokens(condition, "#"):
                names.setdefault(f"#{token}", token)
            values.update({f":{k}": v for k, v in (condition_values or {}).items()})
        if names:
            kwargs["ExpressionAttributeNames"] = names
        if values:
            kwargs["ExpressionAttributeValues"] = to_typed(values)
        try:
            resp = self.client.update_item(
                TableName=self.table,
                Key=self._key(sk),
                UpdateExpression=expression,
                ReturnValues="ALL_NEW" if returns else "NONE",
                **kwargs,
            )
        except ClientError as exc:
            if condition_failed(exc):
                return None
            raise
        return _strip(to_plain(resp.get("Attributes", {})))

    def delete(self, sk: str) -> None:
        self.client.delete_item(TableName=self.table, Key=self._key(sk))

    def query(self, prefix: str, pk: str | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
        """(sk, item) for every item whose sk starts with ``prefix``, paged, consistent."""
        kwargs = self._prefix_query(prefix, pk)
        while True:
            resp = self.client.query(**kwargs)
            for raw in resp.get("Items", []):
                plain = to_plain(raw)
                yield str(plain["sk"]), _strip(plain)
            if "LastEvaluatedKey" not in resp:
                return
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    def _prefix_query(self, prefix: str, pk: str | None = None) -> dict[str, Any]:
        values: dict[str, Any] = {":pk": {"S": pk or self.pk}}
        condition = "pk = :pk"
        if prefix:  # DynamoDB refuses an empty string in a key condition
            condition += " AND begins_with(sk, :p)"
            values[":p"] = {"S": prefix}
        return {
            "TableName": self.table,
            "KeyConditionExpression": condition,
            "ExpressionAttributeValues": values,
            "ConsistentRead": True,
        }

    def count(self, prefix: str) -> int:
        kwargs = {**self._prefix_query(prefix), "Select": "COUNT"}
        total = 0
        while True:
            resp = self.client.query(**kwargs)
            total += int(resp.get("Count", 0))
            if "LastEvaluatedKey" not in resp:
                return total
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    # -- leases ---------------------------------------------------------------------------
    def claim(
        self,
        sk: str,
        owner: str,
        *,
        ttl_seconds: float,
        now: float | None = None,
        extra: Mapping[str, Any] | None = None,
        require_state: str | None = None,
    ) -> dict[str, Any] | None:
        """Take the lease on ``sk`` if it is free, expired or already ours (one conditional write).

        The item must exist (created by a plan or by shard discovery). Returns the claimed item,
        or None if another live owner holds it (or its state is not ``require_state``).
        """
        now = time.time() if now is None else now
        cond = (
            "attribute_exists(sk) AND (attribute_not_exists(#lease_owner) OR "
            "#lease_expires < :now OR #lease_owner = :me)"
        )
        values: dict[str, Any] = {"now": now, "me": owner}
        if require_state is not None:
            cond += " AND #state = :want"
            values["want"] = require_state
        return self.update(
            sk,
            {"lease_owner": owner, "lease_expires": now + ttl_seconds, **(extra or {})},
            add={"lease_counter": 1},
            condition=cond,
            condition_values=values,
        )

    def renew(
        self,
        sk: str,
        owner: str,
        ttl_seconds: float,
        now: float | None = None,
        set_values: Mapping[str, Any] | None = None,
        *,
        add: Mapping[str, int | float] | None = None,
    ) -> None:
        """Extend our lease (optionally writing progress with it, and adding ``add`` to
        counters); LeaseLost if it is not ours.

        The lease must still be ours *and unexpired*: once it has expired anyone may take it
        over, so a holder that was paused past its expiry must not write a checkpoint or
        extend it, even when nobody has taken it yet (issue 10, item 1).
        """
        now = time.time() if now is None else now
        item = self.update(
            sk,
            {"lease_expires": now + ttl_seconds, **(set_values or {})},
            add=add,
            condition=_HELD,
            condition_values={"me": owner, "now": now},
            returns=False,
        )
        if item is None:
            raise LeaseLost(f"lease {sk} is no longer held by {owner} (taken over or expired)")

    def put_new_while_held(
        self, lease_sk: str, owner: str, now: float, items: Mapping[str, Mapping[str, Any]]
    ) -> None:
        """Put the items of ``items`` (sk -> attributes) that do not exist yet, each only while
        ``owner`` holds an unexpired lease on ``lease_sk`` (one transaction per chunk).

        Raises
        ------
        LeaseLost
            When the lease is not (or no longer) ours; nothing of a refused chunk is written.
        """
        for _ in range(3):
            missing = self._missing(items)
            if not missing:
                return
            try:
                for start in range(0, len(missing), _TRANSACT_PUTS):
                    self._transact_puts(
                        lease_sk, owner, now, missing[start : start + _TRANSACT_PUTS], items
                    )
            except ClientError as exc:
                if not _cancelled(exc):
                    raise
                held = self.get(lease_sk) or {}
                if held.get("lease_owner") != owner or float(held.get("lease_expires", 0)) <= now:
                    raise LeaseLost(f"lease {lease_sk} is no longer held by {owner}") from exc
                # Otherwise a put lost to an item written meanwhile: write what is still missing.
        if self._missing(items):
            raise ConflictError(f"could not write {sorted(self._missing(items))} under {lease_sk}")

    def _missing(self, items: Mapping[str, Mapping[str, Any]]) -> list[str]:
        return [sk for sk in items if self.get(sk) is None]

    def _transact_puts(
        self,
        lease_sk: str,
        owner: str,
        now: float,
        sks: list[str],
        items: Mapping[str, Mapping[str, Any]],
    ) -> None:
        check = {
            "ConditionCheck": {
                "TableName": self.table,
                "Key": self._key(lease_sk),
                "ConditionExpression": _HELD,
                "ExpressionAttributeNames": {
                    "#lease_owner": "lease_owner",
                    "#lease_expires": "lease_expires",
                },
                "ExpressionAttributeValues": to_typed({":me": owner, ":now": now}),
            }
        }
        puts = [self._absent_put(sk, items[sk]) for sk in sks]
        self.client.transact_write_items(TransactItems=[check, *puts])  # type: ignore[list-item]

    def _absent_put(
        self, sk: str, attrs: Mapping[str, Any], *, read_held: bool = False
    ) -> dict[str, Any]:
        """A transaction's put of ``sk`` only where it is absent; ``read_held``: a refusal
        returns the item held."""
        put: dict[str, Any] = {
            "TableName": self.table,
            "Item": to_typed({**attrs, "pk": self.pk, "sk": sk}),
            "ConditionExpression": "attribute_not_exists(pk)",
        }
        if read_held:
            put["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
        return {"Put": put}

    def release(self, sk: str, owner: str, set_values: Mapping[str, Any] | None = None) -> bool:
        """Give up our lease; False if it was not ours any more."""
        return (
            self.update(
                sk,
                set_values,
                remove=("lease_owner", "lease_expires"),
                condition="#lease_owner = :me",
                condition_values={"me": owner},
                returns=False,
            )
            is not None
        )

    # -- destination ownership ------------------------------------------------------------
    def register_destination(self, destination_table: str, source_table: str) -> None:
        """Record that this migration writes ``destination_table``; refuse a second migration.

        Raises
        ------
        ConflictError
            When a different migration id already owns that destination.
        """
        pk = keys.destination_pk(destination_table)
        item = to_typed(
            {"pk": pk, "sk": keys.OWNER, "migration_id": self.migration_id, "source": source_table}
        )
        try:
            self.client.put_item(
                TableName=self.table,
                Item=item,
                ConditionExpression="attribute_not_exists(pk) OR migration_id = :me",
                ExpressionAttributeValues={":me": {"S": self.migration_id}},
            )
        except ClientError as exc:
            if not condition_failed(exc):
                raise
            owner = self.get(keys.OWNER, pk=pk) or {}
            raise ConflictError(
                f"destination table {destination_table!r} already belongs to migration "
                f"{owner.get('migration_id')!r} (from {owner.get('source')!r}); "
                f"two migrations writing one table would overwrite each other",
                "use a different destination table; if the other migration was abandoned, "
                f"delete the item pk={pk!r}, sk='OWNER' from control table {self.table!r}",
            ) from exc

    def destination_owner(self, destination_table: str) -> str | None:
        owner = self.get(keys.OWNER, pk=keys.destination_pk(destination_table))
        return None if owner is None else str(owner["migration_id"])

    # -- counters -------------------------------------------------------------------------
    def add_metrics(self, counts: Mapping[Counter, int | float]) -> None:
        """Add to the migration's counters (one write for all of them), with the request
        units this process has spent since the last such write (``livemigrate.accounting``)."""
        with self.unsent_costs() as costs:
            added: list[tuple[str, int | float]] = [*counts.items(), *costs.items()]
            nonzero = {k: v for k, v in added if v}
            if nonzero:
                self.update(keys.METRICS, add=nonzero, returns=False)

    @contextmanager
    def unsent_costs(self) -> Iterator[dict[str, float]]:
        """Request-unit counters not yet written, for a write that happens anyway to ADD
        (given back if the block raises)."""
        if self.ledger is None:
            yield {}
            return
        with self.ledger.unsent() as costs:
            yield costs

    def metrics(self) -> dict[str, Any]:
        """The migration's counters: the METRICS item, with the backfill's unit counters
        (``items_read``, ``items_written``, ...) summed over its units."""
        units = [item for prefix in keys.UNIT_PREFIXES for _, item in self.query(prefix)]
        return with_unit_totals(self.get(keys.METRICS) or {}, units)


def with_unit_totals(
    metrics: Mapping[str, Any], units: Iterable[Mapping[str, Any]]
) -> dict[str, Any]:
    """``metrics`` with the backfill's counters summed over its unit items (segments, splits,
    export files).

    A unit's counters are written in its checkpoint's own update, so they are exact: a page
    read again after a crash is counted once, by the checkpoint that covers it, and the
    backfill needs no counter update of its own per page (issue 18). Older releases also
    added them to METRICS; the units' sums replace those.
    """
    totals: dict[str, int] = dict.fromkeys(UNIT_COUNTERS, 0)
    for item in units:
        for name in UNIT_COUNTERS:
            totals[name] += int(item.get(UNIT_FIELDS[name]) or 0)
    return {**metrics, **totals}


def to_typed(item: Mapping[str, Any]) -> dict[str, Any]:
    """Control-table items may hold floats (times, rates): stored as numbers."""
    return _to_typed(decimalize(dict(item)))


def _update_expression(
    set_values: Mapping[str, Any], add: Mapping[str, int | float], remove: tuple[str, ...]
) -> tuple[dict[str, str], dict[str, Any], str]:
    """Names, values and text of an UpdateExpression; placeholders avoid reserved words."""
    names: dict[str, str] = {}
    values: dict[str, Any] = {}
    clauses: list[str] = []
    for tag, verb, pairs in (("s", "SET", set_values), ("a", "ADD", add)):
        parts = []
        for i, (name, value) in enumerate(pairs.items()):
            names[f"#{tag}{i}"] = name
            values[f":{tag}{i}"] = value
            parts.append(f"#{tag}{i} = :{tag}{i}" if verb == "SET" else f"#{tag}{i} :{tag}{i}")
        if parts:
            clauses.append(f"{verb} " + ", ".join(parts))
    if remove:
        names.update({f"#r{i}": name for i, name in enumerate(remove)})
        clauses.append("REMOVE " + ", ".join(f"#r{i}" for i in range(len(remove))))
    return names, values, " ".join(clauses)


def _strip(item: dict[str, Any]) -> dict[str, Any]:
    item.pop("pk", None)
    item.pop("sk", None)
    return item


def _tokens(expression: str, sigil: str) -> list[str]:
    out = []
    for part in expression.replace("(", " ").replace(")", " ").replace(",", " ").split():
        if part.startswith(sigil) and len(part) > 1:
            out.append(part[1:])
    return out
