"""Hot partition keys (ARCHITECTURE.md rule 7): detecting them and cutting their sort-key range.

Detection
    A Scan segment returns a partition's items in sort-key order, page after page. When the
    last ``min_pages`` pages of a segment were each (almost) entirely one partition key, at
    least ``min_items`` of its items have gone by, and the latest page ends inside it, that key
    is hot: the rest of it would be read serially by one worker. (The item floor keeps small
    pages from calling an ordinary key hot.) A key the operator names (``--hot-key``) is hot
    at first sight, as soon as a page ends inside it.

Splitting
    The remaining sort-key range (checkpoint's sort key, the key's last sort key] is cut into
    sub-ranges by interpolating in the key space, no extra reads needed:

    - numbers: equal numeric steps between the bounds;
    - strings: the first 8 characters after the common prefix of the two bounds are read as
      digits of a number whose alphabet is the range of code points they use (for
      ``msg-001234`` .. ``msg-002978``: '0'..'9', base 10), interpolated, and turned back into
      8-character strings. Fixed-width digit strings sort like the numbers (UTF-8 byte order
      is code-point order), so the boundaries come out sorted. Works well for ids,
      zero-padded numbers and timestamps; an uneven key distribution gives uneven ranges,
      never wrong ones;
    - binary: the same on bytes.

    Boundaries need not be existing items: Query's ExclusiveStartKey is a position.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from backfill.keys import dump_json

WIDTH = 8  # characters of a string key interpolated (after the common prefix)

Attr = dict[str, Any]  # one typed attribute value, e.g. {"S": "x"}


def attr_id(value: Attr) -> str:
    """Stable text of a typed attribute value (what ``--hot-key`` names are compared as)."""
    return dump_json(value)


def named_key(text: str, key_type: str) -> Attr:
    """The typed value of an operator-named hot key for a hash key of ``key_type``."""
    if key_type == "N":
        return {"N": str(Decimal(text))}
    if key_type == "B":
        return {"B": bytes.fromhex(text)}
    return {"S": text}


@dataclass
class HotKeyDetector:
    """Per segment: decides after each page whether the key the page ends in is hot.

    Parameters
    ----------
    min_pages:
        Consecutive pages that must be dominated by the same key.
    min_items:
        Items of that key that must have gone by in those pages.
    share:
        Fraction of a page's items that counts as "dominated".
    named:
        ``attr_id`` of operator-named hot keys.
    """

    min_pages: int = 3
    share: float = 0.9
    named: Collection[str] = ()
    skipped: set[str] = field(default_factory=set)
    min_items: int = 0
    _key: str | None = None
    _streak: int = 0
    _run: int = 0

    def observe(self, page_hash_values: Sequence[Attr], last_hash: Attr | None) -> Attr | None:
        """Feed one page's partition-key values; returns the hot key when it should be split.

        ``last_hash`` is the partition key of the page's LastEvaluatedKey (None at the end of
        the segment: nothing left to split).
        """
        if last_hash is None or not page_hash_values:
            self._key, self._streak = None, 0
            return None
        last = attr_id(last_hash)
        if last in self.skipped:
            return None
        if last in self.named:
            return self._hit(last_hash)
        same = sum(1 for v in page_hash_values if attr_id(v) == last)
        if same < self.share * len(page_hash_values):
            self._key, self._streak, self._run = None, 0, 0
            return None
        if self._key == last:
            self._streak, self._run = self._streak + 1, self._run + same
        else:
            self._key, self._streak, self._run = last, 1, same
        if self._streak >= self.min_pages and self._run >= self.min_items:
            return self._hit(last_hash)
        return None

    def state(self) -> dict[str, Any]:
        """What must survive a restart: saved with the segment's checkpoint, because short
        budgets (Lambda, ``--budget-seconds``) would otherwise never see enough pages."""
        return {"hot_candidate": self._key, "hot_streak": self._streak, "hot_run": self._run}

    def restore(self, saved: dict[str, Any]) -> None:
        candidate = saved.get("hot_candidate")
        self._key = None if candidate is None else str(candidate)
        self._streak = int(saved.get("hot_streak", 0))
        self._run = int(saved.get("hot_run", 0))

    def _hit(self, value: Attr) -> Attr:
        self.skipped.add(attr_id(value))
        self._key, self._streak, self._run = None, 0, 0
        return value


def split_bounds(lower: Attr, upper: Attr, ways: int) -> list[Attr]:
    """Sorted bounds [lower, b1, ..., upper] cutting (lower, upper] into at most ``ways`` ranges.

    Every inner bound is strictly between ``lower`` and ``upper``; duplicates are dropped.
    """
    ((kind, lo),) = lower.items()
    ((_, hi),) = upper.items()
    values: list[Attr]
    if kind == "N":
        values = [{"N": str(v)} for v in _number_bounds(Decimal(lo), Decimal(hi), ways)]
    elif kind == "B":
        values = [{"B": v} for v in _bytes_bounds(bytes(lo), bytes(hi), ways)]
    else:
        values = [{"S": v} for v in _string_bounds(str(lo), str(hi), ways)]
    return [lower, *values, upper]


def _number_bounds(lo: Decimal, hi: Decimal, ways: int) -> list[Decimal]:
    whole = lo == lo.to_integral_value() and hi == hi.to_integral_value()
    out: list[Decimal] = []
    for i in range(1, ways):
        v = lo + (hi - lo) * i / ways
        v = v.to_integral_value(rounding="ROUND_FLOOR") if whole else v
        if lo < v < hi and (not out or v > out[-1]):
            out.append(v)
    return out


def _common_prefix(a: Sequence[Any], b: Sequence[Any]) -> int:
    n = 0
    while n < len(a) and n < len(b) and a[n] == b[n]:
        n += 1
    return n


def _interpolate(lo: list[int], hi: list[int], ways: int) -> list[list[int]]:
    """Code points (or bytes) in between, as fixed-width lists over the alphabet lo..hi use."""
    used = [*lo[:WIDTH], *hi[:WIDTH]] or [0]
    low, base = min(used), max(used) - min(used) + 1

    def number(codes: list[int]) -> int:
        value = 0
        for code in (codes + [low] * WIDTH)[:WIDTH]:
            value = value * base + code - low
        return value

    a, b = number(lo), number(hi)
    out = []
    for i in range(1, ways):
        v = a + (b - a) * i // ways
        codes = []
        for _ in range(WIDTH):
            v, d = divmod(v, base)
            codes.append(low + d)
        out.append(codes[::-1])
    return out


def _string_bounds(lo: str, hi: str, ways: int) -> list[str]:
    n = _common_prefix(lo, hi)
    a, b = [ord(c) for c in lo[n:]], [ord(c) for c in hi[n:]]
    candidates = [lo[:n] + "".join(_char(d) for d in ds) for ds in _interpolate(a, b, ways)]
    return _strictly_between(lo, hi, candidates)


def _char(code: int) -> str:
    # Surrogates cannot be stored; the next valid code point keeps the order.
    return chr(0xE000 if 0xD800 <= code <= 0xDFFF else code)


def _bytes_bounds(lo: bytes, hi: bytes, ways: int) -> list[bytes]:
    n = _common_prefix(lo, hi)
    cands = [lo[:n] + bytes(ds) for ds in _interpolate(list(lo[n:]), list(hi[n:]), ways)]
    return _strictly_between(lo, hi, cands)


def _strictly_between(lo: Any, hi: Any, candidates: list[Any]) -> list[Any]:
    out: list[Any] = []
    for c in candidates:
        key = c.encode() if isinstance(c, str) else c
        if _order(lo) < key < _order(hi) and (not out or key > _order(out[-1])):
            out.append(c)
    return out


def _order(value: str | bytes) -> bytes:
    # DynamoDB compares strings by their UTF-8 bytes.
    return value.encode() if isinstance(value, str) else value


def attr_less(a: Attr, b: Attr) -> bool:
    """DynamoDB's order of two sort-key values of the same type."""
    ((kind, x),) = a.items()
    ((_, y),) = b.items()
    if kind == "N":
        return Decimal(x) < Decimal(y)
    if kind == "B":
        return bytes(x) < bytes(y)
    return _order(str(x)) < _order(str(y))
