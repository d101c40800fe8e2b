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

A destination key that two source items map to is a collision (rule 12): it is reported apart
(``collisions``, with both source keys), fails the verification, and is never repaired; it is
confirmed like a difference, by consistent re-reads of both source items after waiting.
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
from livemigrate.values import canonical_bytes
from livemigrate.verify.digest import (
    Digests,
    batches,
    bucket_of,
    choose_buckets,
    is_tombstone,
    item_hash,
    key_id,
)
from livemigrate.versioning import OWNER_ATTR, SEQ_ATTR, TOMBSTONE_ATTR, user_attributes

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
    held_owner: str | None = None  # the destination's _lm_src (the source item it came from)

    def example(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "key": _safe(self.key),
            "source_key": _safe(self.source_key),
            "expected": _safe(self.expected),
            "actual": _safe(self.actual),
            "held_seq": self.held_seq,
            "held_owner": self.held_owner,
        }


def _safe(item: Mapping[str, Any] | None) -> Any:
    return None if item is None else json.loads(to_json(to_plain(item)))


@dataclass(frozen=True)
class Collision:
    """One destination key that several source items map to (rule 12)."""

    kid: str
    key: TypedItem
    source_keys: tuple[TypedItem, ...]

    def example(self) -> dict[str, Any]:
        return {"key": _safe(self.key), "source_keys": [_safe(k) for k in self.source_keys]}


def classify(
    kid: str,
    key: TypedItem,
    source_key: TypedItem | None,
    expected: TypedItem | None,
    actual_raw: TypedItem | None,
) -> Difference | None:
    """The difference at one key, or None when both sides agree (absent on both is agreement)."""
    held = None if actual_raw is None else actual_raw.get(SEQ_ATTR, {}).get("S")
    owner = None if actual_raw is None else actual_raw.get(OWNER_ATTR, {}).get("S")
    actual = None if actual_raw is None or is_tombstone(actual_raw) else user_attributes(actual_raw)
    if expected is None and actual is None:
        return None
    if expected is not None and actual is not None:
        if canonical_bytes(expected) == canonical_bytes(actual):
            return None
        kind: Kind = "different"
    else:
        kind = "missing" if actual is None else "extra"
    return Difference(kind, kid, key, source_key, expected, actual, held, owner)


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
    collisions: int = 0  # destination keys two source items map to (rule 12)
    collision_examples: list[dict[str, Any]] = field(default_factory=list)

    def record(self, diff: Difference, limit: int) -> None:
        self.counts[diff.kind] += 1
        if len(self.examples[diff.kind]) < limit:
            self.examples[diff.kind].append(diff.example())

    def record_collision(self, collision: Collision, limit: int) -> None:
        self.collisions += 1
        if len(self.collision_examples) < limit:
            self.collision_examples.append(collision.example())


@dataclass
class _Acc:
    """Per-scan-segment accumulator (one per thread, merged afterwards)."""

    digests: Digests
    found: dict[str, tuple[TypedItem, TypedItem | None]] = field(default_factory=dict)
    errors: int = 0
    tombstones: int = 0
    # Source keys beyond the first that map to one destination key (a collision).
    also: dict[str, list[TypedItem]] = field(default_factory=dict)


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
        report.passed = not any(report.counts.values()) and not report.collisions
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
        diffs, collisions = self._item_diffs_and_collisions(n, wanted)
        confirmed = self.recheck_collisions(collisions)
        for collision in confirmed:
            report.record_collision(collision, self.options.examples)
        # A key seen with two source items while it changed hands is an ordinary key again.
        diffs += self._as_differences([c for c in collisions if c not in confirmed])
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
        return self._item_diffs_and_collisions(n, wanted)[0]

    def _item_diffs_and_collisions(
        self, n: int, wanted: set[int]
    ) -> tuple[list[Difference], list[Collision]]:
        """Item-level differences in the ``wanted`` buckets (destination scanned first), and
        the keys there that several source items map to (not differences: never repaired)."""

        def visit_dest(acc: _Acc, item: TypedItem) -> None:
            kid = key_id(item, self.dkeys)
            if bucket_of(kid, n) in wanted:
                acc.found[kid] = (item, None)

        def visit_source(acc: _Acc, item: TypedItem) -> None:
            skey = {name: item[name] for name in self.source.key_names}
            for out in self._outputs(item) or []:
                kid = key_id(out, self.dkeys)
                if bucket_of(kid, n) not in wanted:
                    continue
                if kid in acc.found:
                    acc.also.setdefault(kid, []).append(skey)
                else:
                    acc.found[kid] = (out, skey)

        empty = lambda: _Acc(Digests(1))  # noqa: E731 - only ``found`` is used here
        actual = _merge_found(self._scan(self.destination.name, empty, visit_dest))
        self.hooks.after_destination_scan("diff")
        expected, collisions = _merge_sources(self._scan(self.source.name, empty, visit_source))
        diffs = []
        for kid in sorted(expected.keys() | actual.keys()):
            if kid in collisions:
                continue
            exp, skey = expected.get(kid, (None, None))
            act = actual.get(kid, (None, None))[0]
            key = {name: (exp or act or {})[name] for name in self.dkeys}
            diff = classify(kid, key, skey, exp, act)
            if diff is not None:
                diffs.append(diff)
        found = [
            Collision(kid, {name: expected[kid][0][name] for name in self.dkeys}, tuple(keys))
            for kid, keys in sorted(collisions.items())
        ]
        return diffs, found

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

    def recheck_collisions(self, collisions: Sequence[Collision]) -> list[Collision]:
        """The collisions that persist: at least two of the source items still map to the key
        after each wait (a key handed from one item to another during the scan resolves)."""
        pending = list(collisions)
        for _ in range(self.options.recheck_rounds):
            if not pending:
                break
            self.clock.sleep(self.options.recheck_wait)
            pending = [c for c in pending if self._still_colliding(c)]
        return pending

    def _as_differences(self, resolved: Sequence[Collision]) -> list[Difference]:
        """What a resolved collision's key is now: a difference against the item mapping to
        it (if any), or nothing."""
        out = []
        for collision in resolved:
            mapping = [k for k in collision.source_keys if self.expected_for(k, collision.kid)]
            skey = mapping[0] if mapping else None
            fresh = self.reread(
                Difference("missing", collision.kid, collision.key, skey, None, None)
            )
            if fresh is not None:
                out.append(fresh)
        return out

    def _still_colliding(self, collision: Collision) -> bool:
        mapping = [k for k in collision.source_keys if self.expected_for(k, collision.kid)]
        return len(mapping) >= 2

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
        for out in self.source_outputs(source_key) or []:
            if key_id(out, self.dkeys) == kid:
                return out
        return None

    def source_outputs(self, source_key: Mapping[str, Any]) -> list[TypedItem] | None:
        """transform(source item now): [] when the item is absent, None when the transform
        rejects it."""
        resp = self.dynamodb.get_item(
            TableName=self.source.name, Key=dict(source_key), ConsistentRead=True
        )
        item = resp.get("Item")
        return [] if item is None else self._outputs(item)

    def maps_to(self, source_key: Mapping[str, Any], kid: str) -> bool | None:
        """Whether the source item now maps to ``kid``; None when its transform fails."""
        outputs = self.source_outputs(source_key)
        if outputs is None:
            return None
        return any(key_id(out, self.dkeys) == kid for out in outputs)


def _merge_digests(accs: list[_Acc], n: int) -> Digests:
    total = Digests(n)
    for acc in accs:
        total.merge(acc.digests)
    return total


def _merge_sources(
    accs: list[_Acc],
) -> tuple[dict[str, tuple[TypedItem, TypedItem | None]], dict[str, list[TypedItem]]]:
    """Merged source outputs, and the source keys of each destination key several map to."""
    merged: dict[str, tuple[TypedItem, TypedItem | None]] = {}
    collisions: dict[str, list[TypedItem]] = {}
    for acc in accs:
        for kid, (out, skey) in acc.found.items():
            if kid in merged:
                collisions.setdefault(kid, []).append(skey or {})
            else:
                merged[kid] = (out, skey)
        for kid, keys in acc.also.items():
            collisions.setdefault(kid, []).extend(keys)
    for kid, keys in collisions.items():
        first = merged[kid][1]
        collisions[kid] = [first or {}, *keys]
    return merged, collisions


def _merge_found(accs: list[_Acc]) -> dict[str, tuple[TypedItem, TypedItem | None]]:
    merged: dict[str, tuple[TypedItem, TypedItem | None]] = {}
    for acc in accs:
        merged.update(acc.found)
    return merged
