"""Realistic demo data and a live write load, shared by ``livemigrate demo``, tests and benches.

The source table looks like the application that motivated livemigrate: users, orders and
outboxes, where one outbox (``section-outbox|docket``) holds far more items than any other key.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from livemigrate.client import ActiveTable
from livemigrate.items import to_typed
from livemigrate.tables import create_table

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

HOT_KEY = "section-outbox|docket"
# Creation dates spread over 2025 so the hot outbox lands in twelve month shards.
_YEAR_START = 1_735_689_600  # 2025-01-01T00:00:00Z
_YEAR = 365 * 86_400


def create_source_table(client: DynamoDBClient, name: str, *, stream: bool = True) -> None:
    """A pk/sk table, with the NEW_AND_OLD_IMAGES stream livemigrate needs unless told not."""
    create_table(client, name, stream="NEW_AND_OLD_IMAGES" if stream else None)


def enable_stream(client: DynamoDBClient, name: str) -> None:
    """Turn on the NEW_AND_OLD_IMAGES stream of an existing table (history is not in it)."""
    client.update_table(
        TableName=name,
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )
    client.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1})


def demo_item(rng: random.Random, pk: str, sk: str) -> dict[str, Any]:
    created = _YEAR_START + rng.randrange(_YEAR)
    return {
        "pk": pk,
        "sk": sk,
        "createdAt": Decimal(created),
        "status": rng.choice(["new", "sent", "failed", "archived"]),
        "attempts": Decimal(rng.randrange(5)),
        "body": f"payload {rng.getrandbits(64):016x}",
    }


def demo_items(total: int, hot_share: float = 0.5, seed: int = 7) -> Iterator[dict[str, Any]]:
    """``total`` items; ``hot_share`` of them under the hot outbox key."""
    rng = random.Random(seed)
    hot = int(total * hot_share)
    for i in range(hot):
        yield demo_item(rng, HOT_KEY, f"msg#{i:08d}")
    for i in range(total - hot):
        kind = i % 3
        if kind == 0:
            yield demo_item(rng, f"user|{i:06d}", "profile")
        elif kind == 1:
            yield demo_item(rng, f"order|{i // 3:06d}", f"line#{i:06d}")
        else:
            yield demo_item(rng, f"section-outbox|s{i % 40:02d}", f"msg#{i:08d}")


def seed_table(client: DynamoDBClient, table: str, items: Iterator[dict[str, Any]]) -> int:
    """Write items with BatchWriteItem (25 at a time, unprocessed items retried)."""
    count = 0
    batch: list[dict[str, Any]] = []
    for item in items:
        batch.append({"PutRequest": {"Item": to_typed(item)}})
        count += 1
        if len(batch) == 25:
            _write_batch(client, table, batch)
            batch = []
    if batch:
        _write_batch(client, table, batch)
    return count


def _write_batch(client: DynamoDBClient, table: str, batch: list[dict[str, Any]]) -> None:
    pending: Any = {table: batch}
    delay = 0.05
    while pending:
        resp = client.batch_write_item(RequestItems=pending)
        pending = resp.get("UnprocessedItems") or {}
        if pending:
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


@dataclass
class LoadStats:
    puts: int = 0
    updates: int = 0
    key_moves: int = 0
    deletes: int = 0
    errors: int = 0

    @property
    def total(self) -> int:
        return self.puts + self.updates + self.deletes


@dataclass
class LiveLoad:
    """Puts, updates (some moving an outbox item to another month) and deletes, on a thread.

    ``rate`` is operations per second; ``keys`` are (pk, sk) pairs the load may touch (it also
    inserts new keys). Every operation is a plain write to the source table: the consumer must
    carry it to the destination.
    """

    client: DynamoDBClient
    table: str
    keys: list[tuple[str, str]]
    rate: float = 50.0
    seed: int = 11
    stats: LoadStats = field(default_factory=LoadStats)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> LiveLoad:
        self._thread = threading.Thread(target=self._run, name="live-load", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> LoadStats:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        return self.stats

    def _run(self) -> None:
        rng = random.Random(self.seed)
        interval = 1.0 / self.rate if self.rate > 0 else 0.0
        n = 0
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.step(rng, n)
            except Exception:  # noqa: BLE001 - a failed load write is counted, the load goes on
                self.stats.errors += 1
            n += 1
            self._stop.wait(max(0.0, interval - (time.monotonic() - started)))

    def step(self, rng: random.Random, n: int) -> None:
        """One operation: 40% new items, 35% updates (a third move month), 25% deletes."""
        roll = rng.random()
        if roll < 0.40 or not self.keys:
            pk = rng.choice([HOT_KEY, "user|live", f"section-outbox|s{rng.randrange(40):02d}"])
            key = (pk, f"live#{self.seed}#{n:08d}")
            self.client.put_item(TableName=self.table, Item=to_typed(demo_item(rng, *key)))
            self.keys.append(key)
            self.stats.puts += 1
        elif roll < 0.75:
            self._update(rng)
        else:
            pk, sk = self.keys.pop(rng.randrange(len(self.keys)))
            self.client.delete_item(TableName=self.table, Key={"pk": {"S": pk}, "sk": {"S": sk}})
            self.stats.deletes += 1

    def _update(self, rng: random.Random) -> None:
        pk, sk = rng.choice(self.keys)
        values: dict[str, Any] = {":s": {"S": rng.choice(["sent", "failed", "retried"])}}
        expression = "SET #status = :s"
        if rng.random() < 0.33:
            # A new creation date moves an outbox item to another month shard (rule 5).
            values[":c"] = {"N": str(_YEAR_START + rng.randrange(_YEAR))}
            expression += ", createdAt = :c"
            self.stats.key_moves += 1
        self.client.update_item(
            TableName=self.table,
            Key={"pk": {"S": pk}, "sk": {"S": sk}},
            UpdateExpression=expression,
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues=values,
        )
        self.stats.updates += 1


@dataclass
class CutoverLoad:
    """The application writing through the cutover with checked writes (``ActiveTable.put``).

    Each write is a new item, built for the table the flag names when it lands: the source's
    schema on the source, ``transform`` of it on the destination. ``acknowledged`` keeps every
    write the client confirmed, with the table it landed on, so the demo can check that each of
    them is in the destination afterwards.
    """

    active: ActiveTable
    source_table: str
    transform: Callable[[dict[str, Any]], Any]
    rate: float = 20.0
    acknowledged: dict[tuple[str, str], str] = field(default_factory=dict)
    errors: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> CutoverLoad:
        self._thread = threading.Thread(target=self._run, name="cutover-load", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> CutoverLoad:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=90)
        return self

    def item(self, n: int) -> dict[str, Any]:
        return {
            "pk": "user|cutover",
            "sk": f"write#{n:06d}",
            "createdAt": Decimal(_YEAR_START + n),
            "status": "written across the cutover",
        }

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            source_item = self.item(n)

            def build(table: str, item: dict[str, Any] = source_item) -> dict[str, Any]:
                if table == self.source_table:
                    return to_typed(item)
                return to_typed(next(iter(self.transform(dict(item)))))

            try:
                table = self.active.put(build)
            except Exception:  # noqa: BLE001 - counted: the demo reports failed writes
                self.errors += 1
            else:
                self.acknowledged[(source_item["pk"], source_item["sk"])] = table
            n += 1
            self._stop.wait(1.0 / self.rate)
