"""One contract for the stream sources: the scripted stream, DynamoDB Streams and Kinesis.

The unit tests of the consumer (leases, lineage, hand-offs) run the engine over
``stream_consumer.scripted.ScriptedStream``; in production it reads ``BotoShardSource``
(DynamoDB Streams) or ``KinesisShardSource``. Every case below runs over the scripted stream
and over the real sources on moto's server, so the listing, the iterators and the pages the
engine gets from the fake are what it gets from the real ones. Records are read through the
source's own parser (``parser_of``), as the engine reads them.

What moto does not implement is left out, rather than asserted of the fake alone:

- moto's DynamoDB Streams keep one shard per table that never splits or closes, and answer
  GetShardIterator for an unknown shard with an internal error (DynamoDB: ResourceNotFound):
  lineage, closed shards and unknown shards are checked over the scripted stream and Kinesis;
- moto's Kinesis reshards unlike Kinesis: SplitShard moves the parent's records into the
  children (renumbered), MergeShards copies the parents' records into the child, and a record
  put after either still lands in the closed parent (the first shard whose hash range holds
  the key). Kinesis and DynamoDB Streams keep a closed parent's records where they were and
  send later records to the children, as the scripted stream does. The resharding cases
  below assert the lineage, the end of a closed shard and (merge only) that parents keep their
  records; where later records go, and what a child holds, is left out;
- neither moto service trims records past retention (no ``TrimmedDataAccessException``),
  expires iterators (no ``ExpiredIteratorException``) or throttles reads, so ``DataTrimmed``,
  ``IteratorExpired`` and ``Throttled`` are not part of this suite; the scripted stream's
  versions of them are the unit tests' own tools (``trim_records``, ``expire_iterators``,
  ``inject``);
- shard listing in pages (more than 100 shards for DescribeStream, a NextToken for ListShards)
  is not exercised: the sources follow the pages, but a stream that large is not a fast test.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from livemigrate.aws import AwsClients
from livemigrate.items import TypedItem, to_typed
from livemigrate.records import StreamRecord
from stream_consumer.kinesis.bridge import create_stream
from stream_consumer.kinesis.records import change_record
from stream_consumer.kinesis.source import KinesisShardSource
from stream_consumer.scripted import ScriptedStream, ScriptedTable
from stream_consumer.source import (
    BotoShardSource,
    ShardGone,
    ShardInfo,
    ShardSource,
    parser_of,
)
from tests.services import create_table, unique

SOURCES = ["scripted", "dynamodb-streams", "kinesis"]
# Sources whose shards can be split and merged, and which refuse an unknown shard on moto (see
# the module docstring).
RESHARDING = ["scripted", "kinesis"]
# Kinesis hashes a partition key with MD5 into [0, 2**128); the scripted stream with SHA-256
# into [0, 2**32). Either way, a split at the middle sends some of these keys to each child.
KEYS = [f"user|{n}" for n in range(12)]


@dataclass
class Subject:
    """A source, and how to write to the table or stream behind it."""

    kind: str
    source: ShardSource
    clients: AwsClients | None = None
    target: str = ""  # the table (DynamoDB Streams) or the stream (Kinesis)
    scripted: ScriptedStream | None = None
    written: list[int] = field(default_factory=list)

    def write(self, key: str, n: int) -> None:
        item: TypedItem = to_typed({"pk": key, "sk": "s", "n": n})
        self.written.append(n)
        if self.scripted is not None:
            ScriptedTable(self.scripted).put(item)
            return
        assert self.clients is not None
        if self.kind == "dynamodb-streams":
            self.clients.dynamodb.put_item(TableName=self.target, Item=item)
            return
        assert self.clients.kinesis is not None
        micros = int(time.time() * 1_000_000)
        data = change_record("INSERT", item, item, None, micros, table_name="contract")
        self.clients.kinesis.put_record(
            StreamName=self.target, Data=json.dumps(data).encode(), PartitionKey=key
        )

    def split(self, shard_id: str) -> None:
        if self.scripted is not None:
            self.scripted.split(shard_id)
            return
        assert self.clients is not None and self.clients.kinesis is not None
        ranges = self.clients.kinesis.list_shards(StreamName=self.target)["Shards"]
        (hashes,) = [s["HashKeyRange"] for s in ranges if s["ShardId"] == shard_id]
        middle = (int(hashes["StartingHashKey"]) + int(hashes["EndingHashKey"])) // 2
        self.clients.kinesis.split_shard(
            StreamName=self.target, ShardToSplit=shard_id, NewStartingHashKey=str(middle)
        )

    def merge(self, first: str, second: str) -> None:
        if self.scripted is not None:
            self.scripted.merge(first, second)
            return
        assert self.clients is not None and self.clients.kinesis is not None
        self.clients.kinesis.merge_shards(
            StreamName=self.target, ShardToMerge=first, AdjacentShardToMerge=second
        )


def open_subject(kind: str, clients: AwsClients | None, shards: int = 1) -> Subject:
    if kind == "scripted":
        stream = ScriptedStream(shards=shards)
        return Subject(kind, stream, scripted=stream)
    assert clients is not None
    if kind == "dynamodb-streams":
        table = unique("contract")
        create_table(clients.dynamodb, table)
        arn = clients.dynamodb.describe_table(TableName=table)["Table"]["LatestStreamArn"]
        return Subject(kind, BotoShardSource(clients.streams, arn), clients, table)
    assert clients.kinesis is not None
    name = unique("contract")
    create_stream(clients.kinesis, name, shards=shards)
    return Subject(kind, KinesisShardSource(clients.kinesis, name), clients, name)


def aws(kind: str, request: pytest.FixtureRequest) -> AwsClients | None:
    return None if kind == "scripted" else request.getfixturevalue("clients")


@pytest.fixture(params=SOURCES)
def subject(request: pytest.FixtureRequest) -> Subject:
    return open_subject(request.param, aws(request.param, request))


@pytest.fixture(params=RESHARDING)
def resharding(request: pytest.FixtureRequest) -> Subject:
    return open_subject(request.param, aws(request.param, request))


@pytest.fixture(params=RESHARDING)
def two_shards(request: pytest.FixtureRequest) -> Subject:
    return open_subject(request.param, aws(request.param, request), shards=2)


def pages(
    subject: Subject, shard_id: str, after: str | None = None, limit: int = 3
) -> Iterator[tuple[list[StreamRecord], str | None]]:
    """Every page from ``after`` until a page comes back empty (or the shard ends)."""
    parse = parser_of(subject.source)
    iterator: str | None = subject.source.iterator(shard_id, after)
    while iterator is not None:
        page = subject.source.get_records(iterator, limit)
        assert len(page.records) <= limit
        yield [parse(raw, shard_id) for raw in page.records], page.next_iterator
        if not page.records:
            return
        iterator = page.next_iterator


def read(subject: Subject, shard_id: str, after: str | None = None) -> list[StreamRecord]:
    return [r for records, _ in pages(subject, shard_id, after) for r in records]


def value(record: StreamRecord) -> int:
    assert record.new_image is not None
    return int(record.new_image["n"]["N"])


def only_shard(subject: Subject) -> ShardInfo:
    (shard,) = subject.source.list_shards()
    return shard


# -- every source ----------------------------------------------------------------------------
def test_a_new_stream_lists_its_open_shards_without_parents(subject: Subject) -> None:
    shard = only_shard(subject)
    assert (shard.parents, shard.closed) == ((), False)
    assert subject.source.stream_arn.startswith("arn:")
    assert subject.source.list_shards() == [shard]  # listing changes nothing


def test_the_trim_horizon_gives_every_record_in_order_in_pages_of_the_limit(
    subject: Subject,
) -> None:
    for n in range(7):
        subject.write("user|1", n)
    shard = only_shard(subject)
    got = read(subject, shard.shard_id)
    assert [value(r) for r in got] == list(range(7))
    positions = [r.at for r in got]
    assert positions == sorted(positions) and len(set(positions)) == 7


def test_an_iterator_after_a_position_gives_exactly_the_records_after_it(
    subject: Subject,
) -> None:
    for n in range(6):
        subject.write("user|1", n)
    shard = only_shard(subject).shard_id
    positions = [r.at for r in read(subject, shard)]
    assert [value(r) for r in read(subject, shard, after=positions[2])] == [3, 4, 5]
    assert read(subject, shard, after=positions[-1]) == []


def test_an_open_shard_read_to_its_end_still_gives_later_records(subject: Subject) -> None:
    subject.write("user|1", 0)
    shard = only_shard(subject).shard_id
    *_, (last, following) = pages(subject, shard)  # the empty page at the end
    assert last == [] and following is not None, "an open shard never ends"
    subject.write("user|1", 1)
    page = subject.source.get_records(following, 10)
    assert [value(parser_of(subject.source)(raw, shard)) for raw in page.records] == [1]
    assert page.next_iterator is not None


def test_an_unknown_shard_is_gone(resharding: Subject) -> None:
    only_shard(resharding)
    with pytest.raises(ShardGone):
        resharding.source.iterator("shardId-00000000099-00000000", None)


# -- lineage: the sources that reshard ---------------------------------------------------------
def test_a_split_closes_the_parent_and_opens_two_children_that_name_it(
    resharding: Subject,
) -> None:
    subject = resharding
    parent = only_shard(subject).shard_id
    subject.split(parent)
    shards = {s.shard_id: s for s in subject.source.list_shards()}
    children = [s for s in shards.values() if s.parents == (parent,)]
    assert shards[parent].closed and len(children) == 2 and len(shards) == 3
    assert not any(child.closed for child in children)
    # A closed shard read to its end: no iterator follows its last page. An open one goes on.
    assert list(pages(subject, parent)) == [([], None)]
    for child in children:
        ((records, following),) = pages(subject, child.shard_id)
        assert records == [] and following is not None


def test_a_merge_closes_both_parents_which_keep_their_records_and_end_after_them(
    two_shards: Subject,
) -> None:
    subject = two_shards
    for n, key in enumerate(KEYS):
        subject.write(key, n)
    first, second = sorted(s.shard_id for s in subject.source.list_shards())
    subject.merge(first, second)
    shards = {s.shard_id: s for s in subject.source.list_shards()}
    (child,) = [s for s in shards.values() if s.parents]
    assert set(child.parents) == {first, second} and not child.closed
    assert shards[first].closed and shards[second].closed
    held = []
    for parent in (first, second):
        # The last page of a closed shard has no next iterator: the scripted stream says so
        # with the last records, moto's Kinesis (through the source) on the empty page after.
        *_, (_, following) = pages(subject, parent)
        assert following is None, "a closed shard ends after its records"
        held += [value(r) for r in read(subject, parent)]
    assert sorted(held) == list(range(len(KEYS)))
