"""Reading one export data file from S3, streamed: never a whole file in memory.

Two passes, so that nothing is written from a file that does not match its manifest:

1. ``verify`` streams the object once, hashing its bytes (MD5, compared with the manifest's
   ``md5Checksum``) and counting the lines of the decompressed text (compared with
   ``itemCount``); its S3 ETag must be the manifest's ``etag``. Nothing is parsed or written.
2. ``LineReader`` streams it again, pinned to the verified ETag (``IfMatch``: a replaced object
   fails with 412 instead of being read), and yields pages of items from a line offset on.

Resuming at line N decompresses and skips the first N lines (gzip cannot be entered in the
middle); that costs CPU, not request units or memory.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from backfill.export.manifest import DataFile
from backfill.reader import Page
from livemigrate.items import TypedItem
from livemigrate.ratelimit import PastDeadline
from livemigrate.values import from_dynamodb_json

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

CHUNK = 1 << 20  # bytes read from S3 at a time
GZIP_WBITS = 16 + zlib.MAX_WBITS  # gzip framing


@dataclass(frozen=True)
class ExportPage(Page):
    """A page of items read from a data file, with the line number of its first item."""

    first_line: int = 0


@dataclass(frozen=True)
class Verdict:
    """What the first pass found: ``problem`` is None when the file matches its manifest."""

    etag: str
    problem: str | None


def verify(
    s3: S3Client,
    bucket: str,
    data: DataFile,
    keep_alive: Callable[[], None],
    time_left: Callable[[], float],
) -> Verdict:
    """Stream ``data`` once: MD5 of its bytes, lines of its decompressed text, its ETag.

    ``keep_alive`` is called between chunks (the lease is renewed during a long file);
    PastDeadline when ``time_left()`` runs out first (nothing is recorded: the next holder
    verifies again).
    """
    resp = s3.get_object(Bucket=bucket, Key=data.key)
    etag = str(resp.get("ETag", "")).strip('"')
    if data.etag and etag != data.etag:
        resp["Body"].close()
        return Verdict(etag, f"its ETag is {etag}, the manifest's is {data.etag} (replaced)")
    md5, lines = hashlib.md5(usedforsecurity=False), _LineCounter()
    for chunk in resp["Body"].iter_chunks(CHUNK):
        md5.update(chunk)
        lines.feed(chunk)
        keep_alive()
        if time_left() <= 0:
            resp["Body"].close()
            raise PastDeadline(f"the budget ran out while verifying {data.key}")
    digest = base64.b64encode(md5.digest()).decode()
    if digest != data.md5:
        return Verdict(etag, f"its MD5 is {digest}, the manifest's md5Checksum is {data.md5}")
    try:
        count = lines.total()
    except zlib.error as exc:
        return Verdict(etag, f"it is not valid gzip ({exc})")
    if count != data.item_count:
        return Verdict(
            etag, f"it holds {count} items, the manifest's itemCount is {data.item_count}"
        )
    return Verdict(etag, None)


class _LineCounter:
    """Counts the lines of a gzip stream fed in chunks (members concatenated, as gzip allows)."""

    def __init__(self, limit: int = CHUNK) -> None:
        self._limit = limit  # decompressed bytes at a time: memory stays flat on any input
        self._inflate = zlib.decompressobj(GZIP_WBITS)
        self._lines = 0
        self._last = b"\n"  # the last decompressed byte: a final line without "\n" counts too
        self._error: zlib.error | None = None

    def feed(self, chunk: bytes) -> None:
        if self._error is not None:
            return
        try:
            self._feed(chunk)
        except zlib.error as exc:  # reported after the MD5 (a corrupt file fails that first)
            self._error = exc

    def _feed(self, chunk: bytes) -> None:
        while chunk:
            text = self._inflate.decompress(chunk, self._limit)
            if self._inflate.eof:
                # The next gzip member starts in unused_data, which holds ALL the input left:
                # unconsumed_tail may still hold a copy of it when the limit was reached too.
                chunk = self._inflate.unused_data
                self._inflate = zlib.decompressobj(GZIP_WBITS)
            else:
                chunk = self._inflate.unconsumed_tail
            self._count(text)

    def _count(self, text: bytes) -> None:
        if text:
            self._lines += text.count(b"\n")
            self._last = text[-1:]

    def total(self) -> int:
        if self._error is not None:
            raise self._error
        self._count(self._inflate.flush())
        return self._lines + (self._last != b"\n")


class LineReader:
    """Pages of items of one data file from a line offset, on one open stream.

    ``page(start)`` is called with the position the worker holds (``{"line": n}`` or None for
    the start): the stream goes on from where the last page ended, the same page is given again
    when the worker retries it, and any other position opens the object again and skips to it.
    """

    def __init__(self, s3: S3Client, bucket: str, data: DataFile, etag: str, limit: int) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.data = data
        self.etag = etag
        self.limit = limit
        self._stream: gzip.GzipFile | None = None
        self._body: Any = None
        self._at = 0  # line number the open stream is at
        self._last: ExportPage | None = None

    def page(self, start: dict[str, Any] | None) -> ExportPage:
        line = 0 if start is None else int(start["line"])
        if self._last is not None and self._last.first_line == line:
            return self._last
        if self._stream is None or self._at != line:
            self._open(line)
        try:
            items = self._read(self.limit)
        except BaseException:
            self.close()  # a retry opens the object again at ``line``: no line is skipped
            raise
        self._at = line + len(items)
        end = len(items) < self.limit
        self._last = ExportPage(items, None if end else {"line": self._at}, line)
        if end:
            self.close()
        return self._last

    def _read(self, limit: int) -> list[TypedItem]:
        assert self._stream is not None
        items: list[TypedItem] = []
        while len(items) < limit:
            raw = self._stream.readline()
            if not raw:
                break
            items.append(parse_line(raw))  # one item a line: line numbers are positions
        return items

    def _open(self, line: int) -> None:
        self.close()
        if self.etag:  # pinned to the verified object: a replaced one fails with 412
            resp = self.s3.get_object(Bucket=self.bucket, Key=self.data.key, IfMatch=self.etag)
        else:
            resp = self.s3.get_object(Bucket=self.bucket, Key=self.data.key)
        self._body = resp["Body"]
        self._stream = gzip.GzipFile(fileobj=self._body, mode="rb")
        for _ in range(line):
            self._stream.readline()
        self._at = line

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._body.close()
        self._stream = self._body = None


def parse_line(raw: bytes) -> TypedItem:
    """One export line ``{"Item": {...DynamoDB JSON...}}`` as the typed item boto3 gives."""
    return from_dynamodb_json(json.loads(raw)["Item"])
