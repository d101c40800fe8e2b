"""Search sink logic without a network: ids, documents, batching, the version rule, retries.

The in-memory backend (tests/memory_backend.py) implements the engines' optimistic concurrency
(``_seq_no`` checks, ``create`` conflicts) so the sink's decisions are tested fast and
exhaustively; tests/integration/test_search_contract.py checks it against Elasticsearch and
OpenSearch, and the same behaviour is proven against the real nodes in
tests/integration/test_search_*.py.
"""

from __future__ import annotations

import json
import string
from collections.abc import Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import quote, unquote

import pytest
from boto3.dynamodb.types import Binary
from hypothesis import given
from hypothesis import strategies as st

from livemigrate.clock import FakeClock
from livemigrate.records import ApplyFailure, StreamRecord
from livemigrate.retention import DYNAMODB_STREAMS_RETENTION
from livemigrate.search.backend import BulkAction, BulkResult
from livemigrate.search.batcher import BatchPolicy, chunks
from livemigrate.search.documents import (
    MAX_ID_BYTES,
    build_document,
    default_document,
    document_id,
    load_hook,
)
from livemigrate.search.sink import Indexing, RetryPolicy, SearchSink, retention_warning
from livemigrate.search.targets import FixedTargets, TargetState
from livemigrate.versioning import pad_seq
from tests.memory_backend import MemoryBackend

INDEX = "idx"


class Letters:
    def __init__(self) -> None:
        self.added: list[tuple[str, str, Any, Mapping[str, Any]]] = []

    def add(self, origin: Any, reason: str, raw: Any, key: Mapping[str, Any]) -> str:
        self.added.append((origin, reason, raw, key))
        return str(len(self.added))


def record(
    seq: int, pk: str, value: int | None, *, tomb: bool = False, insert: bool = False
) -> StreamRecord:
    keys = {"pk": {"S": pk}}
    if value is None and not tomb:
        return StreamRecord("REMOVE", keys, None, {**keys}, pad_seq(str(seq)), 0.0)
    image: dict[str, Any] = {**keys, "v": {"N": str(value or 0)}, "_lm_seq": {"S": "x"}}
    if tomb:
        image = {**keys, "_lm_tomb": {"BOOL": True}}
    if insert:
        return StreamRecord("INSERT", keys, image, None, pad_seq(str(seq)), 0.0)
    return StreamRecord("MODIFY", keys, image, None, pad_seq(str(seq)), 0.0)


def make_sink(
    backend: MemoryBackend,
    *,
    lag_warning: float = DYNAMODB_STREAMS_RETENTION.error_seconds,
    **kw: Any,
) -> tuple[SearchSink, Letters, FakeClock]:
    """A sink on a fake clock; ``kw``: the ``Indexing`` fields (hook, policy, retry)."""
    letters, clock = Letters(), FakeClock()
    indexing = Indexing(clock=clock, **kw)
    sink = SearchSink(backend, FixedTargets(INDEX), letters, indexing, lag_warning=lag_warning)
    return sink, letters, clock


# -- ids and documents ------------------------------------------------------------------------
def test_document_id_is_stable_url_safe_and_independent_of_key_order() -> None:
    a = document_id({"pk": {"S": "section-outbox|docket/ä ~x"}, "sk": {"N": "1.50"}})
    b = document_id({"sk": {"N": "1.5"}, "pk": {"S": "section-outbox|docket/ä ~x"}})
    assert a == b
    assert a == "section-outbox%7Cdocket%2F%C3%A4%20%7Ex~1.5"
    assert document_id({"pk": {"B": Binary(b"\x00\xff")}}) == "AP8%3D"


def test_document_id_of_a_long_key_is_a_hash_that_cannot_collide_with_a_readable_id() -> None:
    long_id = document_id({"pk": {"S": "x" * 2000}})
    assert long_id.startswith("~")
    assert len(long_id) == 65
    assert len(long_id.encode()) <= MAX_ID_BYTES
    assert document_id({"pk": {"S": "~" + "a" * 64}}).startswith("%7E")


@given(st.text(min_size=1, max_size=40))
def test_ids_are_percent_encoded_with_only_unreserved_characters_bare(value: str) -> None:
    doc_id = document_id({"pk": {"S": value}})
    assert doc_id == quote(value, safe="-._").replace("~", "%7E")
    assert unquote(doc_id) == value
    assert set(doc_id) <= set(string.ascii_letters + string.digits + "-._%")


@given(st.lists(st.text(min_size=1, max_size=30), min_size=2, max_size=2, unique=True))
def test_distinct_keys_give_distinct_ids(values: list[str]) -> None:
    ids = {document_id({"pk": {"S": v}, "sk": {"S": "s"}}) for v in values}
    assert len(ids) == 2


def test_default_document_is_json_safe_without_reserved_attributes() -> None:
    item = {
        "pk": "a",
        "n": Decimal("3"),
        "f": Decimal("2.5"),
        "ns": {Decimal("3"), Decimal("1")},
        "ss": {"b", "a"},
        "bin": Binary(b"hi"),
        "nested": {"l": [Decimal("1"), {"x": Decimal("0.5")}]},
        "_lm_seq": "0001",
        "_lm_mid": "m",
    }
    assert default_document(item) == {
        "pk": "a",
        "n": 3,
        "f": 2.5,
        "ns": [1, 3],
        "ss": ["a", "b"],
        "bin": "aGk=",
        "nested": {"l": [1, {"x": 0.5}]},
    }


# Integer texts around the fast path's edges: 18 and 19 digits, Elasticsearch's long range
# (2^63), leading zeros, a negative zero, exponent and fraction forms of integers.
LONG = 2**63
integer_texts = st.one_of(
    st.integers(-(10**20), 10**20).map(str),
    st.sampled_from([LONG - 1, LONG, -LONG, -LONG - 1, 10**18 - 1, 10**18, -(10**18)]).map(str),
    st.sampled_from(["0", "-0", "007", "-007", "0" * 19 + "1", "1E+2", "10.0", "+5"]),
)

typed_values = st.recursive(
    st.one_of(
        st.text().map(lambda v: {"S": v}),
        # at most 38 significant digits (35 + 3 places): DynamoDB holds no more
        st.decimals(min_value=-(10**35) + 1, max_value=10**35 - 1, places=3).map(
            lambda d: {"N": str(d)}
        ),
        integer_texts.map(lambda n: {"N": n}),
        st.booleans().map(lambda b: {"BOOL": b}),
        st.just({"NULL": True}),
        st.binary(min_size=1, max_size=8).map(lambda b: {"B": b}),
        st.sets(st.text(), min_size=1, max_size=4).map(lambda v: {"SS": list(v)}),
        st.sets(st.integers(-99, 99), min_size=1, max_size=4).map(
            lambda v: {"NS": [str(n) for n in v]}
        ),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda v: {"L": v}),
        st.dictionaries(st.text(max_size=5), inner, max_size=3).map(lambda v: {"M": v}),
    ),
    max_leaves=8,
)


def via_plain_item(item: dict[str, Any]) -> dict[str, Any]:
    """A user hook that returns the default document: takes the plain (Decimal, set) path."""
    return default_document(item)


@given(st.dictionaries(st.text(min_size=1, max_size=6), typed_values, max_size=6))
def test_fast_default_document_equals_the_plain_round_trip(item: dict[str, Any]) -> None:
    """The typed fast path gives exactly what the hook path (plain item, json_safe) gives."""
    fast = build_document(default_document, item)
    slow = build_document(via_plain_item, item)
    # As JSON text: 3, 3.0 and "3" are equal in neither (== would take 3 for 3.0).
    assert json.dumps(fast, sort_keys=True) == json.dumps(slow, sort_keys=True)


def hook_title_only(item: dict[str, Any]) -> dict[str, Any] | None:
    return None if item.get("hidden") else {"title": item["title"]}


def test_a_user_hook_shapes_the_document_or_excludes_the_item() -> None:
    hook = load_hook(f"{__name__}:hook_title_only")
    assert build_document(hook, {"pk": {"S": "a"}, "title": {"S": "t"}}) == {"title": "t"}
    assert (
        build_document(hook, {"pk": {"S": "a"}, "title": {"S": "t"}, "hidden": {"BOOL": True}})
        is None
    )


def test_an_unloadable_hook_is_an_operator_error() -> None:
    with pytest.raises(Exception, match="cannot be loaded"):
        load_hook("no_such_module_x:fn")


# -- batching -----------------------------------------------------------------------------
def test_policy_flushes_by_count_bytes_and_age() -> None:
    policy = BatchPolicy(max_count=3, max_bytes=100, max_age=2.0)
    assert not policy.should_flush(0, 0, None, 10.0)
    assert policy.should_flush(3, 10, 10.0, 10.0)
    assert policy.should_flush(1, 100, 10.0, 10.0)
    assert not policy.should_flush(1, 10, 10.0, 11.9)
    assert policy.should_flush(1, 10, 10.0, 12.0)


@given(st.lists(st.integers(1, 50), max_size=60), st.integers(1, 7), st.integers(1, 120))
def test_chunks_cover_everything_in_order_within_limits(
    sizes: list[int], max_count: int, max_bytes: int
) -> None:
    policy = BatchPolicy(max_count=max_count, max_bytes=max_bytes)
    batches = list(chunks(zip(range(len(sizes)), sizes, strict=True), policy))
    assert [i for batch in batches for i in batch] == list(range(len(sizes)))
    for batch in batches:
        assert 1 <= len(batch) <= max_count
        assert len(batch) == 1 or sum(sizes[i] for i in batch) <= max_bytes


# -- the version rule ---------------------------------------------------------------------
events = st.lists(
    st.tuples(st.sampled_from("abc"), st.one_of(st.none(), st.integers(0, 9)), st.booleans()),
    max_size=40,
)


@given(events, st.integers(1, 5), st.integers(0, 40))
def test_replays_from_any_position_end_in_the_last_state_of_every_document(
    changes: list[tuple[str, int | None, bool]], batch: int, replay_from: int
) -> None:
    """GIVEN a stream of puts (INSERT or MODIFY) and deletes WHEN applied in any batch size,
    then partly replayed (a crash before the checkpoint) THEN each document holds its last
    event, deletes stay: a replayed INSERT's blind create never overwrites a newer document."""
    records = [record(100 + i, pk, v, insert=ins) for i, (pk, v, ins) in enumerate(changes)]
    backend = MemoryBackend()
    sink, _, _ = make_sink(backend, policy=BatchPolicy(max_count=batch))
    sink.apply(records)
    sink.apply(records[min(replay_from, len(records)) :])
    expected: dict[str, int | None] = {}
    for pk, v, _ in changes:
        expected[pk] = v
    held = backend.index_docs(INDEX)
    assert {k: src["v"] for k, src in held.items()} == {
        k: v for k, v in expected.items() if v is not None
    }


def test_inserts_of_absent_documents_are_written_without_reading_the_index() -> None:
    """GIVEN INSERT records (a backfill's writes reaching D's stream) WHEN applied THEN one bulk
    of creates per batch and no version read; a replay reads only the ids that conflicted."""
    backend = MemoryBackend()
    sink, _, _ = make_sink(backend, policy=BatchPolicy(max_count=3))
    inserts = [record(100 + i, f"k{i}", i, insert=True) for i in range(6)]
    sink.apply(inserts)
    assert backend.reads == [] and len(backend.bulk_calls) == 2
    assert sink.stats.indexed == 6
    sink.apply([*inserts[4:], record(200, "new", 1, insert=True)])  # a replay of the last two
    assert backend.reads == [["k4", "k5"]]  # only the conflicts are read, then skipped
    assert sink.stats.stale == 2 and sink.stats.indexed == 7


def test_a_replay_of_inserts_reads_first_until_a_read_finds_them_absent_again() -> None:
    """GIVEN a replay of INSERTs already indexed (a lost lease) WHEN the first batch's blind
    creates mostly conflict THEN later batches read first (no failed create each), and once a
    read finds the inserted documents absent, blind creates resume."""
    backend = MemoryBackend()
    sink, _, _ = make_sink(backend, policy=BatchPolicy(max_count=3))
    inserts = [record(100 + i, f"k{i}", i, insert=True) for i in range(9)]
    sink.apply(inserts)
    writes = len(backend.bulk_calls)
    sink.apply(inserts)  # the replay: batch 1 conflicts, batches 2 and 3 read first
    assert backend.reads == [["k0", "k1", "k2"], ["k3", "k4", "k5"], ["k6", "k7", "k8"]]
    assert len(backend.bulk_calls) == writes + 1  # only the first batch's failed creates
    assert sink.stats.stale == 9 and sink.stats.retried == 0
    fresh = [record(300 + i, f"n{i}", i, insert=True) for i in range(6)]
    sink.apply(fresh)  # read first once (all absent), then blind again
    assert backend.reads[3:] == [["n0", "n1", "n2"]]
    assert sink.stats.indexed == 15


@pytest.mark.parametrize("insert", [False, True])
def test_an_older_event_never_overwrites_a_newer_one(insert: bool) -> None:
    """Also an older INSERT (a replay), which is written without a read: its create fails."""
    backend = MemoryBackend()
    sink, _, _ = make_sink(backend)
    sink.apply([record(200, "a", 2)])
    sink.apply([record(150, "a", 1, insert=insert)])
    assert backend.index_docs(INDEX)["a"]["v"] == 2
    assert sink.stats.stale == 1


def test_tombstone_images_delete_and_are_never_indexed() -> None:
    backend = MemoryBackend()
    sink, _, _ = make_sink(backend)
    sink.apply([record(1, "a", 1), record(2, "b", 1)])
    sink.apply([record(3, "a", None, tomb=True), record(4, "c", None, tomb=True)])
    assert set(backend.index_docs(INDEX)) == {"b"}


def test_in_tombstone_mode_deletes_leave_markers_and_a_late_scan_create_fails() -> None:
    backend = MemoryBackend()

    class Building:
        def current(self) -> TargetState:
            return TargetState((INDEX,), frozenset({INDEX}))

    sink = SearchSink(backend, Building(), Letters())
    sink.apply([record(5, "a", None)])
    assert backend.index_docs(INDEX)["a"] == {"_lm_seq": pad_seq("5"), "_lm_tomb": True}
    (result,) = backend.bulk([BulkAction("create", INDEX, "a", {"v": 0, "_lm_seq": "0" * 40})])
    assert result.status == 409


def test_rejected_documents_are_retried_alone_with_capped_backoff() -> None:
    backend = MemoryBackend()
    backend.reject["b"] = [BulkResult(429, "es_rejected_execution_exception", "busy")] * 3
    sink, _, clock = make_sink(backend, retry=RetryPolicy(attempts=8, base=1.0, cap=3.0))
    start = clock.now()
    sink.apply([record(1, "a", 1), record(2, "b", 2), record(3, "c", 3)])
    assert set(backend.index_docs(INDEX)) == {"a", "b", "c"}
    assert backend.bulk_calls[1:] == [["b"], ["b"], ["b"]]
    assert clock.now() - start == 1.0 + 2.0 + 3.0  # 1, 2, then capped at 3


def test_a_mapping_error_is_dead_lettered_and_the_rest_continue() -> None:
    backend = MemoryBackend()
    reason = "document_parsing_exception: failed to parse field [v]"
    backend.reject["b"] = [BulkResult(400, "document_parsing_exception", reason)]
    sink, letters, _ = make_sink(backend)
    sink.apply([record(1, "a", 1), record(2, "b", 2), record(3, "c", 3)])
    assert set(backend.index_docs(INDEX)) == {"a", "c"}
    ((origin, why, raw, key),) = letters.added
    assert (origin, key) == ("search", {"pk": "b"})
    assert reason in why
    assert raw["document"] == {"pk": "b", "v": 2}


def test_a_failure_that_persists_raises_apply_failure_at_the_first_unapplied_batch() -> None:
    backend = MemoryBackend()
    sink, _, _ = make_sink(backend, policy=BatchPolicy(max_count=2), retry=RetryPolicy(3))
    backend.reject["c"] = [BulkResult(503, "unavailable_shards_exception", "down")] * 10
    with pytest.raises(ApplyFailure) as info:
        sink.apply([record(1, "a", 1), record(2, "b", 2), record(3, "c", 3), record(4, "d", 4)])
    assert info.value.index == 2
    assert info.value.retryable
    # Everything before the failed record is applied; the rest is replayed by the engine.
    assert {"a", "b"} <= set(backend.index_docs(INDEX))
    assert "c" not in backend.index_docs(INDEX)


def test_whole_request_rejections_back_off_then_succeed() -> None:
    backend = MemoryBackend()
    backend.unavailable = 2
    sink, _, _ = make_sink(backend)
    sink.apply([record(1, "a", 1)])
    assert set(backend.index_docs(INDEX)) == {"a"}


def test_lag_near_retention_is_reported_loudly(caplog: pytest.LogCaptureFixture) -> None:
    backend = MemoryBackend()
    sink, _, clock = make_sink(backend, lag_warning=3600.0)
    rec = record(1, "a", 1)
    old = StreamRecord(
        rec.event_name, rec.keys, rec.new_image, None, rec.sequence_number, clock.now() - 7200
    )
    sink.apply([old])
    assert sink.stats.lag_seconds == 7200
    assert "livemigrate search resync" in caplog.text
    assert "2.0 h BEHIND" in retention_warning(7200)


class GaugeMetrics:
    def __init__(self, trimmed: float, lag: float) -> None:
        self.values = {"trimmed_total": trimmed, "lag_seconds": lag}

    def value(self, name: str, shard: str | None = None) -> float:
        return self.values[name]


def test_retention_watch_points_to_resync_on_trimmed_data_or_lag(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from livemigrate.search.cli import _retention_watch

    _retention_watch(GaugeMetrics(0, 3600))
    assert not caplog.records
    _retention_watch(GaugeMetrics(1, 0))
    assert "TRIMMED" in caplog.text
    assert "livemigrate search resync" in caplog.text
    caplog.clear()
    _retention_watch(GaugeMetrics(0, 21 * 3600))
    assert "21.0 h BEHIND" in caplog.text


def broken_hook(item: dict[str, Any]) -> dict[str, Any]:
    raise AttributeError("user bug")


def test_a_failing_hook_dead_letters_the_item_and_the_rest_continue() -> None:
    backend = MemoryBackend()
    sink, letters, _ = make_sink(backend, hook=load_hook(f"{__name__}:broken_hook"))
    sink.apply([record(1, "a", 1)])
    ((origin, reason, _, key),) = letters.added
    assert (origin, key) == ("search", {"pk": {"S": "a"}})
    assert "AttributeError: user bug" in reason


def test_tombstones_written_after_the_resync_stopped_scanning_are_purged_by_the_sink() -> None:
    """GIVEN a batch that read 'scanning' WHEN the resync marks 'ready' (and purges) before
    the batch's tombstones land THEN the sink removes its own tombstones afterwards."""
    backend = MemoryBackend()
    plain, scanning = TargetState((INDEX,)), TargetState((INDEX,), frozenset({INDEX}))
    states = [plain, scanning, plain]

    class Flipping:
        def current(self) -> TargetState:
            return states.pop(0) if len(states) > 1 else states[0]

    sink = SearchSink(backend, Flipping(), Letters())
    sink.apply([record(1, "a", 1), record(2, "b", 1)])
    sink.apply([record(3, "a", None)])
    assert set(backend.index_docs(INDEX)) == {"b"}
    assert sink.stats.tombstoned == 1


@given(
    st.sampled_from(["index", "create", "delete"]),
    st.text(min_size=1),
    st.text(min_size=1),
    st.none() | st.tuples(st.integers(0, 2**63 - 1), st.integers(1, 2**31)),
)
def test_bulk_action_lines_are_the_json_that_json_dumps_writes(
    op: Any, index: str, doc_id: str, occ: tuple[int, int] | None
) -> None:
    """The action line is assembled from strings for speed; it must be the same JSON text."""
    kw = {"if_seq_no": occ[0], "if_primary_term": occ[1]} if occ else {}
    meta: dict[str, Any] = {"_index": index, "_id": doc_id, **kw}
    source = None if op == "delete" else {"v": doc_id}
    lines = BulkAction(op, index, doc_id, source, **kw).lines()
    assert lines[0] == json.dumps({op: meta}, separators=(",", ":"))
    assert [json.loads(line) for line in lines[1:]] == ([] if source is None else [source])
