"""Source-vs-destination verification: bucket digests first, item diffs only where they differ.

1. Digest pass: a parallel Scan of the destination, then of the source (through the
   transform), each item hashed into a bucket chosen by a hash of its destination key. Equal
   (sum, count) per bucket means equal contents; only differing buckets are looked at again.
2. Diff pass: differing buckets, in batches that fit ``max_items_in_memory``, are scanned again
   (destination first, then source) and their items compared one by one. The destination is
   read first on purpose: an item written to the source after that scan cannot show up as an
   "extra" in the destination, and every other live change shows up as a missing/different item
   whose source key is known, which the recheck can read again.
3. Recheck: after ``recheck_wait`` seconds (so the consumer can apply what changed during the
   scans), each difference is read again with consistent reads (the source item by its key,
   through the transform; the destination item by its key); only what still differs after
   ``recheck_rounds`` rounds is reported.

Tombstones in the destination count as absent; ``_lm_*`` attributes are ignored.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from livemigrate.clock import Clock, SystemClock
from livemigrate.errors import TransformOutputError
from livemigrate.items import TypedItem, to_json, to_plain
from livemigrate.tables import TableInfo
from livemigrate.transform import Transformer
from livemigrate.verify.digest import (
    Digests,
    batches,
    bucket_of,
    canonical,
    choose_buckets,
    is_tombstone,
    item_hash,
    key_id,
    strip_reserved,
)
from livemigrate.versioning import SEQ_ATTR, TOMBSTONE_ATTR

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

Kind = Literal["missing", "extra", "different"]
KINDS: tuple[Kind, ...] = ("missing", "extra", "different")
S = TypeVar("S")


@dataclass(frozen=True)
class Difference:
    """One destination key where transform(source) and the destination disagree."""

    kind: Kind
    kid: str
    key: TypedItem  # destination key
    source_key: TypedItem | None  # None for an extra item (no source item produces it)
    expected: TypedItem | None  # transform(source), or None
    actual: TypedItem | None  # the destination item without _lm_*, or None
    held_seq: str | None = None  # the destination's _lm_seq

    def example(self) -> dict[str, Any]:
        def safe(item: TypedItem | None) -> Any:
            return None if item is None else json.loads(to_json(to_plain(item)))

        return {
            "kind": self.kind,
            "key": safe(self.key),
            "source_key": safe(self.source_key),
            "expected": safe(self.expected),
            "actual": safe(self.actual),
            "held_seq": self.held_seq,
        }


def classify(
    kid: str,
    key: TypedItem,
    source_key: TypedItem | None,
    expected: TypedItem | None,
    actual_raw: TypedItem | None,
) -> Difference | None:
    """The difference at one key, or None when both sides agree (absent on both is agreement)."""
    held = None if actual_raw is None else actual_raw.get(SEQ_ATTR, {}).get("S")
    actual = None if actual_raw is None or is_tombstone(actual_raw) else strip_reserved(actual_raw)
    if expected is None and actual is None:
        return None
    if expected is not None and actual is not None:
        if canonical(expected) == canonical(actual):
            return None
        kind: Kind = "different"
    else:
        kind = "missing" if actual is None else "extra"
    return Difference(kind, kid, key, source_key, expected, actual, held)


@dataclass(frozen=True)
class VerifyOptions:
    """Knobs of one verification run (CLI flags)."""

    buckets: int | None = None  # None: chosen from the table sizes
    segments: int = 4
    recheck_wait: float = 2.0
    recheck_rounds: int = 3
    max_items_in_memory: int = 200_000
    examples: int = 5
    per_bucket: int = 1000
    consumer_wait: float = 30.0  # longest wait for the consumer to pass a difference


@dataclass
class Hooks:
    """Test seams: called after each destination scan with the pass name ("digest" | "diff")."""

    after_destination_scan: Callable[[str], None] = lambda _phase: None


@dataclass
class VerifyReport:
    """What a run found; ``passed`` is parity after recheck."""

    passed: bool = False
    at: float = 0.0
    seconds: float = 0.0
    buckets: int = 0
    differing_buckets: int = 0
    source_items: int = 0  # transform outputs
    destination_items: int = 0  # live items (tombstones excluded)
    tombstones: int = 0  # tombstones seen in the destination (the cutover gate wants 0)
    transform_errors: int = 0
    first_pass_differences: int = 0
    resolved_by_recheck: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    examples: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: {k: [] for k in KINDS}
    )
    repairs: dict[str, int] = field(default_factory=dict)
    search: dict[str, Any] | None = None

    def record(self, diff: Difference, limit: int) -> None:
        self.counts[diff.kind] += 1
        if len(self.examples[diff.kind]) < limit:
            self.examples[diff.kind].append(diff.example())


@dataclass
class _Acc:
    """Per-scan-segment accumulator (one per thread, merged afterwards)."""

    digests: Digests
    found: dict[str, tuple[TypedItem, TypedItem | None]] = field(default_factory=dict)
    errors: int = 0
    tombstones: int = 0


class Verifier:
    """Compares transform(source) with the destination table.

    Parameters
    ----------
    dynamodb:
        DynamoDB client (injected, thread-safe).
    source, destination:
        The two tables.
    transformer:
        The migration's transform (the same one the backfill and consumer run).
    options, clock, hooks:
        See ``VerifyOptions``; ``clock`` times the recheck wait; ``hooks`` are test seams.
    consumer_position:
        Returns the source-stream time up to which the consumer has applied everything
        (``heartbeat_at - lag_seconds``), or None when no live consumer is known. Before each
        recheck round the verifier waits (at most ``consumer_wait``) until the consumer has
        passed the moment the differences were seen.
    """

    def __init__(
        self,
        dynamodb: DynamoDBClient,
        source: TableInfo,
        destination: TableInfo,
        transformer: Transformer,
        options: VerifyOptions | None = None,
        *,
        clock: Clock | None = None,
        hooks: Hooks | None = None,
        consumer_position: Callable[[], float | None] | None = None,
    ) -> None:
        self.dynamodb = dynamodb
        self.consumer_position = consumer_position
        self.source = source
        self.destination = destination
        self.transformer = transformer
        self.options = options or VerifyOptions()
        self.clock: Clock = clock or SystemClock()
        self.hooks = hooks or Hooks()
        self.dkeys = destination.key_names
        self._lock = threading.Lock()

    # -- public -----------------------------------------------------------------------------
    def run(self, repair: Callable[[Difference], str] | None = None) -> VerifyReport:
        """Verify; ``repair`` (if given) is called with each confirmed difference."""
        started = time.monotonic()
        n = self.options.buckets or choose_buckets(
            max(self.source.item_count, self.destination.item_count), self.options.per_bucket
        )
        report = VerifyReport(buckets=n, at=self.clock.now())
        dest, report.tombstones = self._digest_destination(n)
        self.hooks.after_destination_scan("digest")
        src, report.transform_errors = self._digest_source(n)
        report.destination_items, report.source_items = dest.total, src.total
        differing = src.differing(dest)
        report.differing_buckets = len(differing)
        sizes = [max(a, b) for a, b in zip(src.counts, dest.counts, strict=True)]
        for group in batches(differing, sizes, self.options.max_items_in_memory):
            self._diff_batch(n, set(group), report, repair)
        report.passed = not any(report.counts.values())
        report.seconds = round(time.monotonic() - started, 3)
        return report

    # -- scanning ---------------------------------------------------------------------------
    def _scan(
        self, table: str, make: Callable[[], S], visit: Callable[[S, TypedItem], None]
    ) -> list[S]:
        total = self.options.segments

        def segment(number: int) -> S:
            state = make()
            kwargs: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
            if total > 1:  # one segment is the whole table (and moto crashes on it: issue 11)
                kwargs.update(Segment=number, TotalSegments=total)
            while True:
                page = self.dynamodb.scan(**kwargs)
                for item in page.get("Items", []):
                    visit(state, item)
                if "LastEvaluatedKey" not in page:
                    return state
                kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

        with ThreadPoolExecutor(max_workers=total, thread_name_prefix="verify-scan") as pool:
            return list(pool.map(segment, range(total)))

    def _outputs(self, item: TypedItem) -> list[TypedItem] | None:
        """transform(source item), or None when the transform rejects it (a dead letter)."""
        try:
            return self.transformer.run(to_plain(item))
        except TransformOutputError:
            return None

    def _digest_destination(self, n: int) -> tuple[Digests, int]:
        """The destination's digests, and how many tombstones it holds."""

        def visit(acc: _Acc, item: TypedItem) -> None:
            if not is_tombstone(item):
                acc.digests.add(bucket_of(key_id(item, self.dkeys), n), item_hash(item))
            elif item.get(TOMBSTONE_ATTR, {}).get("BOOL", False):
                # Only real tombstones: an item marked for a delete in flight is live traffic.
                acc.tombstones += 1

        accs = self._scan(self.destination.name, lambda: _Acc(Digests(n)), visit)
        return _merge_digests(accs, n), sum(a.tombstones for a in accs)

    def _digest_source(self, n: int) -> tuple[Digests, int]:
        def visit(acc: _Acc, item: TypedItem) -> None:
            outputs = self._outputs(item)
            if outputs is None:
                acc.errors += 1
                return
            for out in outputs:
                acc.digests.add(bucket_of(key_id(out, self.dkeys), n), item_hash(out))

        accs = self._scan(self.source.name, lambda: _Acc(Digests(n)), visit)
        return _merge_digests(accs, n), sum(a.errors for a in accs)

    def _diff_batch(
        self,
        n: int,
        wanted: set[int],
        report: VerifyReport,
        repair: Callable[[Difference], str] | None,
    ) -> None:
        diffs = self._item_diffs(n, wanted)
        report.first_pass_differences += len(diffs)
        remaining = self._recheck_extras(n, self.recheck(diffs))
        report.resolved_by_recheck += len(diffs) - len(remaining)
        outcomes: Counter[str] = Counter()
        for diff in remaining:
            report.record(diff, self.options.examples)
            if repair is not None:
                outcomes[repair(diff)] += 1
        for name, count in outcomes.items():
            report.repairs[name] = report.repairs.get(name, 0) + count

    def _item_diffs(self, n: int, wanted: set[int]) -> list[Difference]:
        """Item-level differences in the ``wanted`` buckets (destination scanned first)."""

        def visit_dest(acc: _Acc, item: TypedItem) -> None:
            kid = key_id(item, self.dkeys)
            if bucket_of(kid, n) in wanted:
                acc.found[kid] = (item, None)

        def visit_source(acc: _Acc, item: TypedItem) -> None:
            skey = {name: item[name] for name in self.source.key_names}
            for out in self._outputs(item) or []:
                kid = key_id(out, self.dkeys)
                if bucket_of(kid, n) in wanted:
                    acc.found[kid] = (out, skey)

        empty = lambda: _Acc(Digests(1))  # noqa: E731 - only ``found`` is used here
        actual = _merge_found(self._scan(self.destination.name, empty, visit_dest))
        self.hooks.after_destination_scan("diff")
        expected = _merge_found(self._scan(self.source.name, empty, visit_source))
        diffs = []
        for kid in sorted(expected.keys() | actual.keys()):
            exp, skey = expected.get(kid, (None, None))
            act = actual.get(kid, (None, None))[0]
            key = {name: (exp or act or {})[name] for name in self.dkeys}
            diff = classify(kid, key, skey, exp, act)
            if diff is not None:
                diffs.append(diff)
        return diffs

    # -- recheck ----------------------------------------------------------------------------
    def recheck(self, diffs: Sequence[Difference]) -> list[Difference]:
        """The differences that persist after waiting and re-reading both sides consistently."""
        pending = list(diffs)
        for _ in range(self.options.recheck_rounds):
            if not pending:
                break
            seen_at = self.clock.now()
            self.clock.sleep(self.options.recheck_wait)
            self.await_consumer(seen_at)
            pending = [d for d in (self.reread(d) for d in pending) if d is not None]
        return pending

    def _recheck_extras(self, n: int, remaining: list[Difference]) -> list[Difference]:
        """Give extras without a known source item one fresh pass over their buckets.

        An extra seen while its source item was deleted and then written again (live traffic)
        cannot be re-read by key: nothing maps a destination key back to its source key. A
        fresh scan of those buckets finds the source item that produces it now.
        """
        extras = [d for d in remaining if d.source_key is None]
        if not extras:
            return remaining
        fresh = self.recheck(self._item_diffs(n, {bucket_of(d.kid, n) for d in extras}))
        still = {d.kid for d in fresh}
        return [d for d in remaining if d.source_key is not None or d.kid in still]

    def await_consumer(self, since: float) -> bool:
        """Wait until the consumer has applied every change made before ``since``.

        True when it has (or no live consumer is known); False after ``consumer_wait``.
        """
        if self.consumer_position is None:
            return True
        deadline = self.clock.now() + self.options.consumer_wait
        while True:
            position = self.consumer_position()
            if position is None or position >= since:
                return True
            if self.clock.now() >= deadline:
                return False
            self.clock.sleep(0.1)

    def reread(self, diff: Difference) -> Difference | None:
        """Read one difference again (consistent reads): None if it is gone."""
        actual = self.get_destination(diff.key)
        if diff.source_key is None:
            # No source item produced this key when the source was scanned (after the
            # destination): only a destination delete since then can resolve it.
            fresh = classify(diff.kid, diff.key, None, None, actual)
            return None if fresh is None else replace(fresh, expected=None)
        expected = self.expected_for(diff.source_key, diff.kid)
        return classify(diff.kid, diff.key, diff.source_key, expected, actual)

    def get_destination(self, key: Mapping[str, Any]) -> TypedItem | None:
        resp = self.dynamodb.get_item(
            TableName=self.destination.name, Key=dict(key), ConsistentRead=True
        )
        return resp.get("Item")

    def expected_for(self, source_key: Mapping[str, Any], kid: str) -> TypedItem | None:
        """transform(source item now) at destination key ``kid``, or None."""
        resp = self.dynamodb.get_item(
            TableName=self.source.name, Key=dict(source_key), ConsistentRead=True
        )
        item = resp.get("Item")
        if item is None:
            return None
        for out in self._outputs(item) or []:
            if key_id(out, self.dkeys) == kid:
                return out
        return None


def _merge_digests(accs: list[_Acc], n: int) -> Digests:
    total = Digests(n)
    for acc in accs:
        total.merge(acc.digests)
    return total


def _merge_found(accs: list[_Acc]) -> dict[str, tuple[TypedItem, TypedItem | None]]:
    merged: dict[str, tuple[TypedItem, TypedItem | None]] = {}
    for acc in accs:
        merged.update(acc.found)
    return merged
