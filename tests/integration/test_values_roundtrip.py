"""Every DynamoDB value survives backfill, consumer and search exactly (issue 11), on moto and
the real Elasticsearch node; verify sees a change in the 38th digit, one set element, one byte.

Each hypothesis example is one whole migration with fresh tables and index: a key schema with
any of S, N, B as hash and as range key, items with every type (nested maps and lists, sets,
empty strings and binary, NULL, BOOL, numbers of 38 significant digits), some written before
the consumer starts (the backfill copies them) and the others after (the stream applies them),
through an identity transform. Then the destination and the index must equal the transform's
output exactly and ``verify`` passes; then one value of one destination item is changed and
``verify`` must name that item.

moto's server crashes (HTTP 500) on a Scan with a ``Segment`` parameter (even 0 of 1) of a table
whose hash key is binary, so every scan here uses one segment (backfill ``--total-segments 1``,
verify ``segments=1``; one segment is scanned without the parameter);
``test_segmented_scan_crash_of_the_emulator_is_named`` pins the message the tool gives instead.

Cost: ``max_examples=5``, each a whole migration: about 7 s each on an idle 2-core machine
(backfill 2 s, consume 1 s, search sync 2.6 s, verify 0.2 s); 82 s for the test at load 10.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Context, Decimal
from pathlib import Path
from typing import Any

import pytest
from elasticsearch import Elasticsearch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from livemigrate.aws import AwsClients
from livemigrate.demo_data import enable_stream
from livemigrate.items import to_json, to_plain
from livemigrate.migration import open_migration
from livemigrate.search.documents import build_document, default_document, document_id
from livemigrate.values import canonical_text, key_text, number_text
from livemigrate.verify import verify
from livemigrate.verify.engine import VerifyOptions
from livemigrate.versioning import user_attributes as strip_reserved
from tests.services import create_table, scan_all, settings_for, unique
from tests.support.values import command, put_all

pytestmark = pytest.mark.integration

WIDE = Context(prec=100)  # exact sums of 38-digit numbers
IDENTITY = "tests.support.values:identity"
ONE_SEGMENT = VerifyOptions(
    buckets=4, segments=1, recheck_wait=0.1, recheck_rounds=1, consumer_wait=0.5
)
# Unmapped fields are kept in _source but not indexed: random attribute names of random types
# would otherwise conflict in a dynamic mapping (a search concern, not a value one).
INDEX_CONFIG = {"settings": {"number_of_replicas": 0}, "mappings": {"dynamic": False}}


# -- generated DynamoDB items --------------------------------------------------------------------
names = st.from_regex(r"[a-z][a-z0-9]{0,5}", fullmatch=True).filter(lambda n: n not in ("pk", "sk"))
numbers38 = st.builds(
    lambda digits, exponent: f"{digits}E{exponent}",
    st.integers(-(10**38) + 1, 10**38 - 1),
    st.integers(-60, 60),
)
# Exactly 38 significant digits (before trailing zeroes), for the 38th-digit change.
numbers_of_38_digits = st.builds(
    lambda sign, digits, exponent: f"{sign}{digits}E{exponent}",
    st.sampled_from(["", "-"]),
    st.integers(10**37, 10**38 - 1),
    st.integers(-60, 60),
)
texts = st.text(max_size=6)
blobs = st.binary(max_size=6)
KEY_VALUES = {
    "S": st.text(min_size=1, max_size=6).map(lambda v: {"S": v}),
    "N": numbers38.map(lambda v: {"N": v}),
    "B": st.binary(min_size=1, max_size=6).map(lambda v: {"B": v}),
}
string_sets = st.sets(st.text(min_size=1, max_size=4), min_size=1, max_size=3).map(
    lambda v: {"SS": sorted(v)}
)
number_sets = st.lists(
    numbers38, min_size=1, max_size=3, unique_by=lambda n: key_text({"n": {"N": n}})
).map(lambda v: {"NS": v})
binary_sets = st.sets(st.binary(min_size=1, max_size=4), min_size=1, max_size=3).map(
    lambda v: {"BS": sorted(v)}
)
sets = st.one_of(string_sets, number_sets, binary_sets)
scalars = st.one_of(
    texts.map(lambda v: {"S": v}),
    numbers38.map(lambda v: {"N": v}),
    blobs.map(lambda v: {"B": v}),
    st.booleans().map(lambda v: {"BOOL": v}),
    st.just({"NULL": True}),
    sets,
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda v: {"L": v}),
        st.dictionaries(names, inner, max_size=3).map(lambda v: {"M": v}),
    ),
    max_leaves=6,
)


@st.composite
def migrations(draw: Any) -> tuple[tuple[str, str], list[dict[str, Any]], int]:
    """A key schema, items with unique keys (by DynamoDB's value), how many are seeded first."""
    hash_type, range_type = draw(st.sampled_from("SNB")), draw(st.sampled_from("SNB"))
    item = st.fixed_dictionaries(
        {
            "pk": KEY_VALUES[hash_type],
            "sk": KEY_VALUES[range_type],
            "num": numbers_of_38_digits.map(lambda v: {"N": v}),
            "tags": sets,
            "blob": st.binary(min_size=1, max_size=6).map(lambda v: {"B": v}),
        },
        optional={"empty": st.just({"S": ""}), "emptyb": st.just({"B": b""})},
    ).flatmap(
        lambda fixed: st.dictionaries(names, values, max_size=4).map(
            lambda extra: {**extra, **fixed}
        )
    )
    items = draw(
        st.lists(
            item,
            min_size=1,
            max_size=6,
            unique_by=lambda i: key_text({"pk": i["pk"], "sk": i["sk"]}),
        )
    )
    return (hash_type, range_type), items, draw(st.integers(0, len(items)))


# -- the commands, in this process ------------------------------------------------------------


def destination_items(clients: AwsClients, table: str) -> dict[str, dict[str, Any]]:
    return {
        key_text({"pk": i["pk"], "sk": i["sk"]}): strip_reserved(i)
        for i in scan_all(clients.dynamodb, table)
    }


def index_documents(es: Elasticsearch, index: str) -> dict[str, dict[str, Any]]:
    es.indices.refresh(index=index)
    hits = es.search(index=index, size=100, query={"match_all": {}})["hits"]["hits"]
    return {h["_id"]: strip_reserved(h["_source"]) for h in hits}


def bump(text: str) -> str:
    """The number plus one unit of its 38th significant digit (in exponent notation: boto3
    refuses to read back a plain-notation number longer than 38 digits)."""
    number = Decimal(text)
    unit = Decimal(1).scaleb(number.adjusted() - 37)
    bumped = number.fma(1, unit, WIDE).normalize(WIDE)
    assert number_text(bumped) != number_text(number)
    return str(bumped)


def mutate(item: dict[str, Any], kind: str) -> dict[str, Any]:
    """One value changed: the 38th digit of a number, one set element, or one byte."""
    if kind == "number":
        return {**item, "num": {"N": bump(item["num"]["N"])}}
    if kind == "set":
        ((set_kind, elements),) = item["tags"].items()
        changes: dict[str, Callable[[Any], Any]] = {
            "SS": lambda e: e + "!",
            "NS": bump,
            "BS": lambda e: bytes(e) + b"!",
        }
        changed = changes[set_kind](elements[0])
        return {**item, "tags": {set_kind: [changed, *elements[1:]]}}
    blob = bytearray(item["blob"]["B"])
    blob[0] ^= 0x01
    return {**item, "blob": {"B": bytes(blob)}}


@settings(
    max_examples=5,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    # Every example is a whole migration (seconds): a failure is printed as drawn, not shrunk.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
@given(case=migrations(), change=st.sampled_from(["number", "set", "byte"]), rnd=st.randoms())
def test_every_value_survives_backfill_consumer_and_search_and_verify_sees_one_change(
    clients: AwsClients,
    es_url: str,
    tmp_path: Path,
    *,
    case: tuple[tuple[str, str], list[dict[str, Any]], int],
    change: str,
    rnd: Any,
) -> None:
    (hash_type, range_type), items, seeded = case
    keys = (("pk", hash_type), ("sk", range_type))
    source, dest = unique("vsrc"), unique("vdst")
    create_table(clients.dynamodb, source, keys=keys, stream=None)
    create_table(clients.dynamodb, dest, keys=keys)
    config = tmp_path / f"{dest}.json"
    config.write_text(json.dumps(INDEX_CONFIG))
    s = settings_for(source, dest, transform=IDENTITY, search_alias=unique("vals"))
    # GIVEN items written before the stream exists (backfill path only) and after (both paths:
    # the consumer reads the stream from its start and wins over the backfill)
    put_all(clients, source, items[:seeded])
    enable_stream(clients.dynamodb, source)
    put_all(clients, source, items[seeded:])
    backfill = ("backfill", "--without-consumer", "--total-segments", "1", "--page-size", "3")
    assert command(s, clients, *backfill, "--workers", "1") == 0
    assert command(s, clients, "consume", "--until-caught-up", "--poll-interval", "0.05") == 0
    sync = ("sync", "--until-caught-up", "--poll-interval", "0.05", "--index-config", str(config))
    assert command(s, clients, "search", *sync) == 0

    # THEN the destination is the transform's output exactly, and so are the documents
    want = {key_text({"pk": i["pk"], "sk": i["sk"]}): i for i in items}
    held = destination_items(clients, dest)
    assert sorted(held) == sorted(want)
    assert all(canonical_text(held[k]) == canonical_text(want[k]) for k in want)
    es = Elasticsearch(es_url)
    docs = index_documents(es, f"{s.search_alias}-{s.migration_id}")
    assert docs == {
        document_id({"pk": i["pk"], "sk": i["sk"]}): build_document(default_document, i)
        for i in items
    }
    migration = open_migration(s, clients, require_source_stream=False)
    report = verify(migration, ONE_SEGMENT)
    assert report.passed, report

    # WHEN one value of one destination item changes THEN verify fails and names that item
    target = rnd.choice(list(scan_all(clients.dynamodb, dest)))
    clients.dynamodb.put_item(TableName=dest, Item=mutate(target, change))
    report = verify(migration, ONE_SEGMENT, search=False)
    assert not report.passed
    assert report.counts == {"missing": 0, "extra": 0, "different": 1}
    (named,) = report.examples["different"]
    assert named["key"] == json.loads(to_json(to_plain({"pk": target["pk"], "sk": target["sk"]})))
    es.close()


def test_segmented_scan_crash_of_the_emulator_is_named(
    clients: AwsClients, capsys: pytest.CaptureFixture[str]
) -> None:
    """GIVEN a table whose hash key is binary on moto's server (which answers a segmented Scan
    with an HTML 500) WHEN the backfill scans it in 2 segments THEN it stops with a message
    naming the crash and the way around it; with one segment it copies every item."""
    keys = (("pk", "B"), ("sk", "N"))
    source, dest = unique("bsrc"), unique("bdst")
    create_table(clients.dynamodb, source, keys=keys)
    create_table(clients.dynamodb, dest, keys=keys, stream=None)
    items = [{"pk": {"B": bytes([i, 0xFF])}, "sk": {"N": "1" * 38}} for i in range(6)]
    put_all(clients, source, items)
    s = settings_for(source, dest, transform=IDENTITY)
    flags = ("backfill", "--without-consumer", "--workers", "1")
    assert command(s, clients, *flags, "--total-segments", "2") == 2
    assert "--total-segments 1" in capsys.readouterr().err
    other = unique("bdst")  # the failed run owns ``dest``: a new migration needs its own table
    create_table(clients.dynamodb, other, keys=keys, stream=None)
    fresh = settings_for(source, other, transform=IDENTITY)
    assert command(fresh, clients, *flags, "--total-segments", "1") == 0
    held = destination_items(clients, other)
    assert sorted(held) == sorted(key_text({"pk": i["pk"], "sk": i["sk"]}) for i in items)


def test_verify_sees_a_missing_item_whose_numeric_key_differs_past_the_28th_digit(
    clients: AwsClients,
) -> None:
    """GIVEN two source items whose numeric keys differ only in the 38th digit, and only one of
    them in the destination WHEN verify runs THEN it fails with that one missing (before: both
    keys had one id and verify passed with source_items 2, destination_items 1: issue 11)."""
    keys = (("pk", "N"),)
    source, dest = unique("nsrc"), unique("ndst")
    create_table(clients.dynamodb, source, keys=keys)
    create_table(clients.dynamodb, dest, keys=keys, stream=None)
    first = {"pk": {"N": "1" * 38}, "v": {"S": "a"}}
    second = {"pk": {"N": "1" * 37 + "2"}, "v": {"S": "a"}}
    put_all(clients, source, [first, second])
    put_all(clients, dest, [first])
    s = settings_for(source, dest, transform=IDENTITY)
    report = verify(open_migration(s, clients, require_source_stream=False), ONE_SEGMENT)
    assert not report.passed
    assert report.counts == {"missing": 1, "extra": 0, "different": 0}
    assert report.examples["missing"][0]["key"] == {"pk": int("1" * 37 + "2")}
