"""The reverse consumer's logic without services: round trip, gate, rollback refusal, echoes."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import TYPE_CHECKING, Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from livemigrate.clock import FakeClock
from livemigrate.control import ControlStore
from livemigrate.cutover import CutoverOptions
from livemigrate.cutover_rollback import Rollback
from livemigrate.errors import PreflightError
from livemigrate.examples.hot_outbox import inverse, transform
from livemigrate.exitcodes import ExitCode
from livemigrate.flag import Flag
from livemigrate.gates import Policy, Snapshot, reverse_gate, reverse_problems
from livemigrate.items import to_typed
from livemigrate.keys import CONSUMER_REVERSE
from livemigrate.keys import ROLLBACK as ROLLBACK_ITEM
from livemigrate.records import EventName, StreamRecord
from livemigrate.replication import FORWARD, REVERSE, Marks
from livemigrate.transform import Transformer, load_transform
from livemigrate.versioning import MIGRATION_ATTR, pad_seq
from stream_consumer.applier import DestinationApplier
from stream_consumer.metrics import Metrics
from stream_consumer.reverse import check_round_trip
from tests.support.consumer_model import ModelWriter, SwitchableMode
from tests.support.flags import MemoryFlags

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

KEYS = ("pk", "sk")
KEY_TYPES = {"pk": "S", "sk": "S"}
FORWARD_FN = "livemigrate.examples.hot_outbox:transform"
INVERSE_FN = "livemigrate.examples.hot_outbox:inverse"
JAN_2024 = 1704067200


def transformer(spec: str) -> Transformer:
    return Transformer(load_transform(spec), KEYS, KEY_TYPES)


# -- inverse(transform(item)) == item ----------------------------------------------------------
WORD = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=10)
# Names the transform owns (pk, sk, createdAt, created_at, schema_version) are not extras.
EXTRA_NAME = WORD.filter(lambda n: n not in ("pk", "sk")).map(lambda n: f"x-{n}")
EXTRA_VALUE = st.one_of(
    st.text(max_size=8),
    st.integers(-(10**12), 10**12).map(Decimal),
    st.decimals(-(10**6), 10**6, places=3, allow_nan=False, allow_infinity=False),
)


@st.composite
def source_items(draw: st.DrawFn) -> dict[str, Any]:
    prefix = draw(st.sampled_from(["section-outbox|", "user|"]))
    item: dict[str, Any] = dict(draw(st.dictionaries(EXTRA_NAME, EXTRA_VALUE, max_size=4)))
    item.update(
        pk=prefix + draw(WORD),
        sk=draw(st.text(min_size=1, max_size=12)),
        # 1970 .. 2100, whole seconds (what the application stores)
        createdAt=Decimal(draw(st.integers(0, 4_102_444_800))),
    )
    return item


@given(source_items())
def test_inverse_gives_every_source_item_back(item: dict[str, Any]) -> None:
    outputs = list(transform(dict(item)))
    back = [source for out in outputs for source in inverse(dict(out))]
    assert back == [item]
    if item["pk"].startswith("section-outbox|"):
        assert outputs[0]["pk"] != item["pk"]  # the month shard really was added and dropped


# -- check_round_trip ----------------------------------------------------------------------------
class ScanOnly:
    """A DynamoDB client whose only call is ``scan`` (one page of typed items)."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = [to_typed(i) for i in items]
        self.calls: list[dict[str, Any]] = []

    def scan(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        return {"Items": self.items[: kwargs["Limit"]]}


def client_of(scan: ScanOnly) -> DynamoDBClient:
    return cast("DynamoDBClient", scan)


SAMPLE = [
    {"pk": "section-outbox|docket", "sk": "a", "createdAt": Decimal(JAN_2024), "note": "hi"},
    {"pk": "user|7", "sk": "b", "createdAt": Decimal(JAN_2024 + 99), "n": Decimal("1.5")},
    # after a cutover, source items carry the reverse consumer's stamps: not part of the item
    {
        "pk": "user|8",
        "sk": "c",
        "createdAt": Decimal(JAN_2024),
        REVERSE.seq_attr: pad_seq("12"),
        MIGRATION_ATTR: "m1",
    },
]


def lossy_inverse(item: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The example inverse, but it forgets ``note``."""
    for source in inverse(item):
        yield {k: v for k, v in source.items() if k != "note"}


def failing_inverse(item: dict[str, Any]) -> Iterator[dict[str, Any]]:
    raise KeyError("created_at")


def test_a_true_inverse_passes_and_counts_the_checked_items() -> None:
    scan = ScanOnly(SAMPLE)
    checked = check_round_trip(
        client_of(scan), "src", transformer(FORWARD_FN), transformer(INVERSE_FN), 25
    )
    assert checked == 3
    assert scan.calls == [{"TableName": "src", "Limit": 25}]


def test_items_the_transform_refuses_are_not_checked() -> None:
    scan = ScanOnly([*SAMPLE, {"pk": "user|9", "sk": "d"}])  # no createdAt: dead-lettered
    checked = check_round_trip(
        client_of(scan), "src", transformer(FORWARD_FN), transformer(INVERSE_FN), 25
    )
    assert checked == 3


def test_a_lossy_inverse_is_refused_naming_the_attribute_and_the_item() -> None:
    lossy = transformer("tests.unit.test_reverse_logic:lossy_inverse")
    with pytest.raises(PreflightError) as caught:
        check_round_trip(client_of(ScanOnly(SAMPLE)), "src", transformer(FORWARD_FN), lossy, 25)
    problem = caught.value.problem
    assert "lost ['note']" in problem
    assert "section-outbox|docket" in problem and '"a"' in problem  # the item's key
    assert "inverse(transform(item)) == item" in caught.value.fix


def test_an_inverse_that_raises_is_refused() -> None:
    failing = Transformer(failing_inverse, KEYS, KEY_TYPES)
    with pytest.raises(PreflightError, match="inverse transform fails on source item"):
        check_round_trip(client_of(ScanOnly(SAMPLE)), "src", transformer(FORWARD_FN), failing, 5)


def test_sample_zero_skips_the_check_without_reading() -> None:
    scan = ScanOnly(SAMPLE)
    lossy = Transformer(lossy_inverse, KEYS, KEY_TYPES)
    assert check_round_trip(client_of(scan), "src", transformer(FORWARD_FN), lossy, 0) == 0
    assert scan.calls == []


# -- the cutover gate ---------------------------------------------------------------------------
NOW = 10_000.0
REQUIRED = Policy(max_heartbeat_age=30, require_reverse=True)


def test_reverse_gate_is_met_without_an_inverse_and_says_what_that_means() -> None:
    gate = reverse_gate(Snapshot(now=NOW), Policy())
    assert gate.met
    assert "loses writes" in gate.why


def test_reverse_gate_refuses_a_reverse_consumer_that_never_ran() -> None:
    gate = reverse_gate(Snapshot(now=NOW), REQUIRED)
    assert not gate.met
    assert "never run" in gate.why
    assert "livemigrate reverse" in gate.fix


def test_reverse_gate_refuses_a_stale_heartbeat() -> None:
    gate = reverse_gate(Snapshot(now=NOW, reverse={"heartbeat_at": NOW - 300}), REQUIRED)
    assert not gate.met
    assert "300s old" in gate.why


def test_reverse_gate_refuses_lost_records() -> None:
    lost = {"heartbeat_at": NOW - 1, "records_lost_at": NOW - 5, "records_lost_shard": "shard-7"}
    gate = reverse_gate(Snapshot(now=NOW, reverse=lost), REQUIRED)
    assert not gate.met
    assert "lost records" in gate.why and "shard-7" in gate.why


def test_reverse_gate_is_met_by_a_fresh_reverse_consumer() -> None:
    assert reverse_gate(Snapshot(now=NOW, reverse={"heartbeat_at": NOW - 29}), REQUIRED).met


# -- rollback -----------------------------------------------------------------------------------
def test_reverse_problems_lists_every_problem() -> None:
    assert reverse_problems({"heartbeat_at": NOW - 10}, NOW, 30) == []
    assert "never run" in reverse_problems(None, NOW, 30)[0]
    both = reverse_problems(
        {"heartbeat_at": NOW - 60, "records_lost_at": NOW, "records_lost_shard": "s-1"}, NOW, 30
    )
    assert len(both) == 2
    assert "60s old" in both[0] and "s-1" in both[1]
    assert "not running" in reverse_problems({}, NOW, 30)[0]  # no heartbeat at all


class MemoryControl:
    """The calls ``Rollback`` makes on the control store; the reverse heartbeat is fresh
    (follows the clock) when ``reverse_running``."""

    def __init__(self, clock: FakeClock, *, reverse_running: bool = False) -> None:
        self.clock = clock
        self.reverse_running = reverse_running
        self.items: dict[str, dict[str, Any]] = {}

    def get(self, sk: str) -> dict[str, Any] | None:
        if sk == CONSUMER_REVERSE and self.reverse_running:
            return {"heartbeat_at": self.clock.now(), "records_behind": 0, "lag_seconds": 0.0}
        return self.items.get(sk)

    def put(self, sk: str, values: dict[str, Any]) -> None:
        self.items[sk] = dict(values)

    def update(self, sk: str, values: dict[str, Any], **_condition: Any) -> None:
        """The drain request the rollback writes on the consumer item."""
        self.items.setdefault(sk, {}).update(values)

    def query(self, prefix: str) -> list[tuple[str, dict[str, Any]]]:
        """The drain check reads the consumer's shard items; there are none here."""
        return [(sk, item) for sk, item in self.items.items() if sk.startswith(prefix)]


CUT_OVER = Flag(
    "destination",
    "orders_v2",
    epoch=2,
    flipped_at=1_000_000.0 - 60,
    source_table="orders",
    destination_table="orders_v2",
)


def rollback(
    *, reverse_running: bool = False, **options: Any
) -> tuple[int, MemoryFlags, MemoryControl, list[str]]:
    clock = FakeClock()
    store = MemoryControl(clock, reverse_running=reverse_running)
    flags = MemoryFlags(CUT_OVER)
    out: list[str] = []
    code = Rollback(cast(ControlStore, store), flags, clock=clock, out=out.append, **options).run()
    return code, flags, store, out


def test_rollback_with_an_inverse_but_no_reverse_consumer_is_refused() -> None:
    code, flags, store, out = rollback(inverse_transform=INVERSE_FN)
    assert code == ExitCode.GATES_UNMET
    assert flags.flag == CUT_OVER  # not flipped
    assert ROLLBACK_ITEM not in store.items
    assert "reverse consumer has never run" in "\n".join(out)
    assert "--force" in "\n".join(out)


def test_forced_rollback_flips_back_and_warns_about_lost_writes() -> None:
    code, flags, store, out = rollback(inverse_transform=INVERSE_FN, force=True)
    text = "\n".join(out)
    assert code == 0
    assert (flags.flag.active, flags.flag.table, flags.flag.epoch) == ("source", "orders", 3)
    assert "warning (--force): the reverse consumer has never run" in text
    assert "are not in the source table" in text
    assert store.items[ROLLBACK_ITEM]["reverse"] is False


def test_rollback_with_a_running_reverse_consumer_keeps_the_writes() -> None:
    code, flags, store, out = rollback(inverse_transform=INVERSE_FN, reverse_running=True)
    text = "\n".join(out)
    assert code == 0
    assert flags.flag.active == "source"
    assert store.items[ROLLBACK_ITEM]["reverse"] is True
    assert "warning" not in text
    assert "the destination is quiet" in text


def test_fenced_rollback_needs_an_inverse() -> None:
    code, flags, store, out = rollback(options=CutoverOptions(fenced=True))
    assert code == ExitCode.GATES_UNMET
    assert flags.flag == CUT_OVER
    assert ROLLBACK_ITEM not in store.items
    assert "--fenced" in out[0] and "no inverse transform" in out[0]


# -- echoes are skipped by the applier ---------------------------------------------------------
def change(
    old: dict[str, Any] | None, new: dict[str, Any] | None, seq: int, keys: dict[str, Any]
) -> StreamRecord:
    name: EventName = "REMOVE" if new is None else ("MODIFY" if old else "INSERT")
    return StreamRecord(
        event_name=name,
        keys=to_typed(keys),
        new_image=None if new is None else to_typed({**keys, **new}),
        old_image=None if old is None else to_typed({**keys, **old}),
        sequence_number=pad_seq(str(seq)),
        approximate_creation=0.0,
    )


def stamp(marks: Marks, n: int) -> dict[str, Any]:
    return {marks.seq_attr: pad_seq(str(n)), MIGRATION_ATTR: "m1"}


def apply(
    records: list[StreamRecord], fn: str, echo_of: Marks
) -> tuple[dict[str, dict[str, Any]], Metrics]:
    writer = ModelWriter()
    metrics = Metrics("test")
    applier = DestinationApplier(
        transformer(fn), writer, SwitchableMode(lambda: True), metrics, threads=2, echo_of=echo_of
    )
    try:
        applier.apply(records)
    finally:
        applier.close()
    return writer.visible(), metrics


def test_forward_applier_skips_the_reverse_consumers_writes_and_applies_the_apps() -> None:
    keys = {"pk": "section-outbox|docket", "sk": "a"}
    body = {"createdAt": Decimal(JAN_2024), "v": "x"}
    echoes = [
        change(None, {**body, **stamp(REVERSE, 4)}, 10, keys),  # reverse put
        change({**body, **stamp(REVERSE, 4)}, {**body, **stamp(REVERSE, 6)}, 11, keys),
        change({**body, **stamp(REVERSE, 6), REVERSE.delete_attr: True}, None, 12, keys),
    ]
    visible, metrics = apply(echoes, FORWARD_FN, REVERSE)
    assert visible == {}
    assert metrics.value("echoes_skipped_total") == 3
    assert metrics.value("writes_applied_total") == 0

    app = change({**body, **stamp(REVERSE, 6)}, {**body, **stamp(REVERSE, 6), "v": "y"}, 13, keys)
    visible, metrics = apply([*echoes, app], FORWARD_FN, REVERSE)
    assert metrics.value("echoes_skipped_total") == 3
    assert metrics.value("writes_applied_total") == 1
    [(_, item)] = visible.items()
    assert item["pk"] == "section-outbox|docket|2024-01" and item["v"] == "y"


def test_reverse_applier_skips_forward_writes_and_applies_the_apps() -> None:
    keys = {"pk": "section-outbox|docket|2024-01", "sk": "a"}
    body = {"created_at": "2024-01-01T00:00:00+00:00", "schema_version": Decimal(2)}
    forward_put = change(None, {**body, **stamp(FORWARD, 3)}, 20, keys)
    app_update = change(
        {**body, **stamp(FORWARD, 3)}, {**body, **stamp(FORWARD, 3), "v": 1}, 21, keys
    )
    visible, metrics = apply([forward_put, app_update], INVERSE_FN, FORWARD)
    assert metrics.value("echoes_skipped_total") == 1
    [(_, item)] = visible.items()
    assert item == {
        "pk": "section-outbox|docket",
        "sk": "a",
        "createdAt": Decimal(JAN_2024),
        "v": Decimal(1),
    }
