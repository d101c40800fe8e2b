"""Both directions at once on moto: the forward and the reverse consumer never ping-pong.

A scenario is a random history of an application writing whichever table is active (puts,
updates that keep livemigrate's stamps, deletes), cutovers and rollbacks (each after the
consumer of the old side has drained, as the fenced commands do), and the two consumers
applying their streams in batches of random size, lagging each other arbitrarily, with crashes
before the checkpoint (the batch, or its tail, is applied again; the engine never re-delivers a
record before its checkpoint). The real
``DestinationApplier`` / ``DestinationWriter`` run against moto's tables and streams.

Expected, once the application stops: both streams fall quiet within a few rounds (no echo
loop), the source holds exactly the application's latest items and the destination exactly
their transform, whichever table they were written to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from livemigrate.aws import AwsClients
from livemigrate.destination import DestinationWriter
from livemigrate.examples.hot_outbox import inverse, transform
from livemigrate.items import to_plain, to_typed
from livemigrate.records import StreamRecord
from livemigrate.replication import FORWARD, REVERSE
from livemigrate.tables import create_like, describe
from livemigrate.transform import Transformer
from livemigrate.versioning import user_attributes
from stream_consumer.applier import DestinationApplier
from stream_consumer.metrics import Metrics
from stream_consumer.reverse import StillMapsGuard
from tests.services import StreamTail, create_table, scan_all, unique
from tests.support.consumer_model import SwitchableMode

KEYS = [("section-outbox|docket", "a"), ("user|7", "b"), ("section-outbox|docket", "c")]
JAN, FEB = 1735689600, 1738368000
PK_SK = ("pk", "sk")
TYPES = {"pk": "S", "sk": "S"}

# (what, item index, value): app puts/updates/deletes, pumps (n records, crash, rewind), flips.
Step = tuple[str, int, int]
step = st.one_of(
    st.tuples(
        st.sampled_from(["put", "put", "update", "delete", "move"]),
        st.integers(0, 2),
        st.integers(0, 9),
    ),
    st.tuples(st.sampled_from(["forward", "reverse"]), st.integers(1, 6), st.integers(0, 3)),
    st.tuples(st.just("flip"), st.just(0), st.just(0)),
)


class Tail:
    """Everything one table's stream has delivered, and one consumer's position in it."""

    def __init__(self, clients: AwsClients, table: str) -> None:
        self.stream = StreamTail(clients, table)  # moto: one shard, so one order
        self.records: list[StreamRecord] = []
        self.position = 0  # the checkpoint: records before it are applied

    def read(self) -> int:
        """Fetch what the stream has now; the number of new records."""
        new = self.stream.poll()
        self.records += new
        return len(new)


@dataclass
class World:
    clients: AwsClients
    source: str
    dest: str
    forward: DestinationApplier
    reverse: DestinationApplier
    tails: dict[str, Tail]
    active: str = "source"
    latest: dict[int, dict[str, Any] | None] = field(default_factory=dict)

    def app(self, what: str, index: int, value: int) -> None:
        pk, sk = KEYS[index]
        held = self.latest.get(index)
        item: dict[str, Any] = {
            "pk": pk,
            "sk": sk,
            "createdAt": Decimal(JAN),
            "status": f"v{value}",
        }
        if self.active == "source" and value % 3 == 0 and index != 1:
            item["createdAt"] = Decimal(FEB)  # moves the destination key (rule 5)
        if held is not None and self.active == "destination":
            item["createdAt"] = held["createdAt"]  # new-schema apps keep an item's key
        if what in ("update", "move") and held is None:
            what = "put"
        if what == "move" and self.active == "source":
            what = "put"  # on the source a move is a put with another createdAt
        if what == "move":
            assert held is not None
            self._move(held, value)
            return
        if what == "delete":
            if held is not None:
                self._delete(held)
            self.latest[index] = None
        elif what == "update":
            assert held is not None
            self._update(held, item["status"])
            self.latest[index] = {**held, "status": item["status"]}
        else:
            self._put(item)
            self.latest[index] = item

    def _move(self, held: dict[str, Any], value: int) -> None:
        """The new-schema application moves an item to another month: a put of the new key and
        a delete of the old, in either order (two records that map back to one source key)."""
        moved = {**held, "createdAt": Decimal(FEB if held["createdAt"] == JAN else JAN)}
        moved["status"] = f"m{value}"
        old = next(iter(transform(dict(held))))
        old_key = to_typed({"pk": old["pk"], "sk": old["sk"]})
        new_item = to_typed(next(iter(transform(dict(moved)))))

        def put() -> None:
            self.clients.dynamodb.put_item(TableName=self.dest, Item=new_item)

        def delete() -> None:
            self.clients.dynamodb.delete_item(TableName=self.dest, Key=old_key)

        writes = (put, delete) if value % 2 else (delete, put)
        same_key = new_item["pk"] == old_key["pk"]  # only outbox keys are sharded by month
        for write in (put,) if same_key else writes:
            write()
        self.latest[KEYS.index((held["pk"], held["sk"]))] = moved

    def _on_active(self, item: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        if self.active == "source":
            return self.source, item
        return self.dest, next(iter(transform(dict(item))))

    def _put(self, item: dict[str, Any]) -> None:
        table, body = self._on_active(item)
        self.clients.dynamodb.put_item(TableName=table, Item=to_typed(body))

    def _update(self, held: dict[str, Any], status: str) -> None:
        table, body = self._on_active(held)
        self.clients.dynamodb.update_item(
            TableName=table,
            Key=to_typed({"pk": body["pk"], "sk": body["sk"]}),
            UpdateExpression="SET #s = :s",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={":s": {"S": status}},
        )

    def _delete(self, held: dict[str, Any]) -> None:
        table, body = self._on_active(held)
        key = to_typed({"pk": body["pk"], "sk": body["sk"]})
        self.clients.dynamodb.delete_item(TableName=table, Key=key)

    def pump(self, which: str, n: int, crash: int) -> int:
        """Apply up to ``n`` new records of one stream; with ``crash``, apply some again."""
        tail = self.tails[which]
        tail.read()
        applier = self.forward if which == "source" else self.reverse
        batch = tail.records[tail.position : tail.position + n]
        if not batch:
            return 0
        applier.apply(batch)
        if crash:  # died before the checkpoint: the batch comes again (from where it failed)
            applier.apply(batch[min(crash - 1, len(batch) - 1) :])
            applier.apply(batch)
        tail.position += len(batch)
        return len(batch)

    def drain(self, which: str) -> None:
        while self.pump(which, 50, 0) or self.tails[which].read():
            pass

    def flip(self) -> None:
        self.drain(self.active)  # the fenced cutover / rollback: the old side is drained first
        self.active = "destination" if self.active == "source" else "source"


def world(clients: AwsClients) -> World:
    source, dest = unique("rev-src"), unique("rev-dst")
    create_table(clients.dynamodb, source)
    create_like(clients.dynamodb, describe(clients.dynamodb, source, "source"), dest)
    forward = DestinationApplier(
        Transformer(transform, PK_SK, TYPES),
        DestinationWriter(clients.dynamodb, dest, PK_SK, "m1"),
        SwitchableMode(lambda: True),
        Metrics("source"),
        threads=2,
    )
    reverse = DestinationApplier(
        Transformer(inverse, PK_SK, TYPES),
        DestinationWriter(clients.dynamodb, source, PK_SK, "m1", marks=REVERSE),
        SwitchableMode(lambda: True),
        Metrics("reverse"),
        threads=2,
        echo_of=FORWARD,
        guard=StillMapsGuard(clients.dynamodb, source, Transformer(transform, PK_SK, TYPES), PK_SK),
    )
    tails = {"source": Tail(clients, source), "destination": Tail(clients, dest)}
    return World(clients, source, dest, forward, reverse, tails)


def visible(clients: AwsClients, table: str) -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for raw in scan_all(clients.dynamodb, table):
        item = user_attributes(to_plain(raw))
        out[(item["pk"], item["sk"])] = item
    return out


def settle(w: World, rounds: int = 8) -> int:
    """Pump both consumers until neither stream has anything new; the rounds it took."""
    for n in range(1, rounds + 1):
        moved = w.pump("source", 100, 0) + w.pump("destination", 100, 0)
        moved += w.tails["source"].read() + w.tails["destination"].read()
        if not moved:
            return n
    raise AssertionError(f"the streams did not fall quiet in {rounds} rounds: an echo loop")


def play(clients: AwsClients, steps: list[Step]) -> World:
    w = world(clients)
    for what, a, b in steps:
        if what == "flip":
            w.flip()
        elif what in ("forward", "reverse"):
            w.pump("source" if what == "forward" else "destination", a, b)
        else:
            w.app(what, a, b)
    settle(w)
    return w


def check(w: World) -> None:
    live = [item for item in w.latest.values() if item is not None]
    assert visible(w.clients, w.source) == {(i["pk"], i["sk"]): i for i in live}
    want_dest = {}
    for item in live:
        for out in transform(dict(item)):
            want_dest[(out["pk"], out["sk"])] = out
    assert visible(w.clients, w.dest) == want_dest


CUTOVER_AND_BACK: list[Step] = [
    ("put", 0, 1), ("put", 1, 3), ("put", 2, 4), ("forward", 2, 1), ("flip", 0, 0),
    ("update", 0, 5), ("delete", 1, 0), ("reverse", 3, 2), ("put", 1, 7), ("put", 2, 8),
    ("flip", 0, 0), ("delete", 0, 0), ("update", 2, 9), ("forward", 4, 3),
]  # fmt: skip


# An update on the source that moves the destination key: the forward consumer's orphan delete
# comes back on the destination stream and must not delete the source item.
MOVE_ON_SOURCE: list[Step] = [("put", 0, 1), ("forward", 3, 0), ("put", 0, 3), ("flip", 0, 0)]
# The new-schema application moves an item (put new key, then delete old): the delete, applied
# last, must not delete the source item the put wrote.
MOVE_ON_DESTINATION: list[Step] = [("put", 0, 1), ("flip", 0, 0), ("move", 0, 1)]
# Deleted and written again on the source: the forward consumer's delete, seen on the
# destination stream after the item is back in the source, must not delete it there.
RECREATE_ON_SOURCE: list[Step] = [
    ("put", 1, 1), ("forward", 5, 0), ("delete", 1, 0), ("forward", 5, 0), ("put", 1, 2),
]  # fmt: skip


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@example(CUTOVER_AND_BACK)
@example(MOVE_ON_SOURCE)
@example(MOVE_ON_DESTINATION)
@example(RECREATE_ON_SOURCE)
@given(st.lists(step, min_size=4, max_size=24))
def test_both_directions_converge_and_fall_quiet(clients: AwsClients, steps: list[Step]) -> None:
    check(play(clients, steps))


def test_echoes_are_skipped_and_the_loop_ends_quickly(clients: AwsClients) -> None:
    w = play(clients, CUTOVER_AND_BACK)
    check(w)
    # Every consumer write came back on the other stream and was recognised as an echo.
    assert w.forward.metrics.value("echoes_skipped_total") > 0
    assert w.reverse.metrics.value("echoes_skipped_total") > 0
    # Once quiet, more pumping finds nothing: one round.
    assert settle(w) == 1


def test_without_the_echo_filter_the_tables_ping_pong(clients: AwsClients) -> None:
    # The control: consumers that do not know each other's marks re-apply each other's writes
    # (each with a newer stamp, so the version rule lets it through), forever.
    w = world(clients)
    w.forward.echo_of = FORWARD  # the source never holds forward stamps: matches nothing
    w.reverse.echo_of = REVERSE  # likewise on the destination
    for step_ in CUTOVER_AND_BACK[:5]:
        what, a, b = step_
        if what == "flip":
            w.flip()
        elif what == "forward":
            w.pump("source", a, b)
        else:
            w.app(what, a, b)
    rounds = 0
    try:
        settle(w, rounds=6)
    except AssertionError:
        rounds = -1
    assert rounds == -1, "without echo detection the streams should never fall quiet"
