"""The export backfill's pure parts: counting lines of chunked gzip, naming an export."""

from __future__ import annotations

import gzip
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backfill.export.datafile import _LineCounter
from backfill.export.manifest import DataFile, parse_time, parse_uri
from livemigrate.errors import PreflightError

LINES = st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=60)


@given(
    lines=LINES,
    members=st.integers(1, 4),
    chunk=st.integers(1, 97),
    limit=st.integers(1, 64),
    final_newline=st.booleans(),
)
def test_lines_are_counted_whatever_the_chunks_and_gzip_members(
    lines: list[bytes], members: int, chunk: int, limit: int, final_newline: bool
) -> None:
    # GIVEN the lines of a data file, gzipped in several members, fed in chunks of any size
    text = b"".join(line + b"\n" for line in lines)
    if not final_newline and lines and lines[-1]:
        text = text[:-1]  # a last line without "\n" still counts
    cut = [text[i * len(text) // members : (i + 1) * len(text) // members] for i in range(members)]
    body = b"".join(gzip.compress(part) for part in cut)
    # (a small output limit: members end while output is held back, as in large files)
    counter = _LineCounter(limit)
    for at in range(0, len(body), chunk):
        counter.feed(body[at : at + chunk])
    # THEN the count is the number of lines (a last line without "\n" counts)
    assert counter.total() == len(lines)


def test_a_truncated_gzip_is_reported_not_counted() -> None:
    body = gzip.compress(b"a\nb\n" * 1000)
    counter = _LineCounter()
    counter.feed(body[: len(body) // 2] + b"\x00garbage" + body[len(body) // 2 :])
    with pytest.raises(zlib.error):
        counter.total()


def test_an_export_is_named_by_its_folder_with_or_without_the_summary_or_slash() -> None:
    want = ("b", "p/AWSDynamoDB/0123-ab/")
    assert parse_uri("s3://b/p/AWSDynamoDB/0123-ab/") == want
    assert parse_uri("s3://b/p/AWSDynamoDB/0123-ab") == want
    assert parse_uri("s3://b/p/AWSDynamoDB/0123-ab/manifest-summary.json") == want
    with pytest.raises(PreflightError, match="not an export"):
        parse_uri("/tmp/export")


def test_manifest_lines_and_times_are_read_as_dynamodb_writes_them() -> None:
    line = {
        "itemCount": 3,
        "md5Checksum": "sQMSpEILNgoQmarvDFonGQ==",
        "etag": '"af83d6f217c19b8b0fff8023d8ca4716-1"',
        "dataFileS3Key": "p/AWSDynamoDB/0123-ab/data/x.json.gz",
    }
    data = DataFile.from_line(line)
    assert data.etag == "af83d6f217c19b8b0fff8023d8ca4716-1" and data.item_count == 3
    assert parse_time("2020-11-04T07:28:34.028Z") == pytest.approx(1604474914.028)
