"""verify against moto: parity, real differences, live changes during the run, and --repair."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from livemigrate import cli
from livemigrate.aws import AwsClients
from livemigrate.destination import DestinationWriter
from livemigrate.items import to_plain
from livemigrate.migration import Migration, open_migration
from livemigrate.verify import Hooks, VerifyOptions, verify
from livemigrate.verify.digest import key_id
from livemigrate.verify.engine import Difference, Verifier
from livemigrate.verify.repair import Repairer
from livemigrate.versioning import BACKFILL_SEQ, SEQ_ATTR, pad_seq
from tests.services import create_table, settings_for, unique
from tests.support.verify import FAST, seed


def dest_key(migration: Migration, item: dict[str, Any]) -> dict[str, Any]:
    (out,) = migration.transformer.run(to_plain(item))
    return {k: out[k] for k in migration.destination.key_names}


@pytest.fixture
def migration(clients: AwsClients) -> Iterator[Migration]:
    src, dst = unique("vsrc"), unique("vdst")
    create_table(clients.dynamodb, src)
    create_table(clients.dynamodb, dst)
    settings = settings_for(src, dst, search_url=None)
    yield open_migration(settings, clients, require_source_stream=False)


def run_cli(migration: Migration, monkeypatch: pytest.MonkeyPatch, *extra: str) -> int:
    s = migration.settings
    monkeypatch.setenv("LIVEMIGRATE_MIGRATION_ID", s.migration_id)
    monkeypatch.setenv("LIVEMIGRATE_SOURCE_TABLE", s.source_table)
    monkeypatch.setenv("LIVEMIGRATE_DESTINATION_TABLE", s.destination_table)
    monkeypatch.setenv("LIVEMIGRATE_CONTROL_TABLE", s.control_table)
    monkeypatch.delenv("LIVEMIGRATE_SEARCH_URL", raising=False)
    args = ["verify", "--json", "--recheck-wait", "0.1", "--recheck-rounds", "1", *extra]
    return cli.main(args)


def test_parity_exits_0_and_records_a_passed_verify(
    migration: Migration, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(migration)
    # GIVEN a tombstone in D for a key the source does not have: it counts as absent
    migration.writer.remove({"pk": {"S": "gone"}, "sk": {"S": "1"}}, pad_seq("5"), tombstone=True)
    assert run_cli(migration, monkeypatch, "--buckets", "4") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["passed"] is True
    assert out["source_items"] == out["destination_items"] == 30
    assert out["differing_buckets"] == 0
    held = migration.store.get("VERIFY") or {}
    assert held["passed"] is True
    assert held["missing"] == held["extra"] == held["different"] == 0


def test_missing_extra_and_different_items_exit_1_with_counts(
    migration: Migration, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    items = seed(migration)
    ddb = migration.clients.dynamodb
    # GIVEN one destination item deleted, one changed, one that no source item produces
    ddb.delete_item(TableName=migration.destination.name, Key=dest_key(migration, items[4]))
    changed = {**dest_key(migration, items[7]), "v": {"S": "tampered"}}
    (original,) = migration.transformer.run(to_plain(items[7]))
    ddb.put_item(TableName=migration.destination.name, Item={**original, **changed})
    ddb.put_item(
        TableName=migration.destination.name,
        Item={"pk": {"S": "orphan"}, "sk": {"S": "1"}, SEQ_ATTR: {"S": BACKFILL_SEQ}},
    )
    # WHEN verify runs with small memory (several batches of differing buckets)
    code = run_cli(migration, monkeypatch, "--buckets", "16", "--max-items-in-memory", "3")
    out = json.loads(capsys.readouterr().out)
    # THEN exit 1 and exactly one of each, with examples
    assert code == 1
    assert out["counts"] == {"missing": 1, "extra": 1, "different": 1}
    assert out["examples"]["different"][0]["actual"]["v"] == "tampered"
    assert out["examples"]["different"][0]["expected"]["v"] == "x"
    assert out["examples"]["extra"][0]["key"] == {"pk": "orphan", "sk": "1"}
    held = migration.store.get("VERIFY") or {}
    assert (held["passed"], held["missing"], held["extra"], held["different"]) == (False, 1, 1, 1)


def apply_to_destination(migration: Migration, item: dict[str, Any], seq: str) -> None:
    """What the stream consumer does for an INSERT/MODIFY: transform, put-if-newer."""
    for out in migration.transformer.run(to_plain(item)):
        migration.writer.put_if_newer(out, seq)


def test_item_changed_during_verification_is_not_a_false_alarm(migration: Migration) -> None:
    items = seed(migration)
    ddb = migration.clients.dynamodb
    target = items[5]

    def during(phase: str) -> None:
        # A live write lands in S after D was scanned; the consumer applies it a little later.
        version = {"digest": "v2", "diff": "v3"}[phase]
        changed = {**target, "v": {"S": version}}
        ddb.put_item(TableName=migration.source.name, Item=changed)
        if phase == "diff":
            timer = threading.Timer(0.1, apply_to_destination, (migration, changed, pad_seq("9")))
            timer.start()

    report = verify(migration, FAST, hooks=Hooks(after_destination_scan=during))
    assert report.first_pass_differences == 1
    assert report.resolved_by_recheck == 1
    assert report.passed


def test_a_change_the_consumer_never_applies_is_still_reported(migration: Migration) -> None:
    # The control case of the test above: without the apply, the difference is real.
    items = seed(migration)
    ddb = migration.clients.dynamodb

    def during(phase: str) -> None:
        ddb.put_item(TableName=migration.source.name, Item={**items[5], "v": {"S": phase}})

    report = verify(migration, FAST, hooks=Hooks(after_destination_scan=during))
    assert not report.passed
    assert report.counts == {"missing": 0, "extra": 0, "different": 1}


def held(migration: Migration, key: dict[str, Any]) -> dict[str, Any] | None:
    resp = migration.clients.dynamodb.get_item(
        TableName=migration.destination.name, Key=key, ConsistentRead=True
    )
    return resp.get("Item")


def test_repair_fixes_missing_and_backfill_copies_but_never_a_stream_write(
    migration: Migration,
) -> None:
    items = seed(migration)
    ddb, table = migration.clients.dynamodb, migration.destination.name
    missing_key = dest_key(migration, items[1])
    ddb.delete_item(TableName=table, Key=missing_key)
    # a stale backfill copy (backfill sequence): repairable
    stale_key = dest_key(migration, items[2])
    (stale,) = migration.transformer.run({**to_plain(items[2]), "v": "stale"})
    ddb.put_item(TableName=table, Item={**stale, SEQ_ATTR: {"S": BACKFILL_SEQ}})
    # a value the stream wrote (newer than what this verify read of S): never overwritten
    stream_key = dest_key(migration, items[3])
    (newer,) = migration.transformer.run({**to_plain(items[3]), "v": "newer"})
    DestinationWriter(ddb, table, migration.destination.key_names, migration.id).put_if_newer(
        newer, pad_seq("77")
    )

    report = verify(migration, FAST, repair=True)

    assert report.counts == {"missing": 1, "extra": 0, "different": 2}
    assert report.repairs == {"repaired": 2, "skipped_stream_written": 1}
    assert (held(migration, missing_key) or {})["v"] == {"S": "x"}
    assert (held(migration, missing_key) or {})[SEQ_ATTR] == {"S": BACKFILL_SEQ}
    assert (held(migration, stale_key) or {})["v"] == {"S": "x"}
    assert (held(migration, stream_key) or {})["v"] == {"S": "newer"}
    assert (held(migration, stream_key) or {})[SEQ_ATTR] == {"S": pad_seq("77")}
    again = verify(migration, FAST)
    assert again.counts == {"missing": 0, "extra": 0, "different": 1}


def test_repair_of_an_item_deleted_in_the_source_meanwhile_is_undone(
    migration: Migration,
) -> None:
    # GIVEN a missing item whose source is deleted right after the repair's first read (and
    # the consumer applied that delete before the repair's write landed)
    items = seed(migration, n=6)
    ddb, table = migration.clients.dynamodb, migration.destination.name
    key = dest_key(migration, items[1])
    ddb.delete_item(TableName=table, Key=key)
    verifier = Verifier(ddb, migration.source, migration.destination, migration.transformer, FAST)
    skey = {"pk": items[1]["pk"], "sk": items[1]["sk"]}
    diff = Difference("missing", key_id(key, ("pk", "sk")), key, skey, None, None)
    real = verifier.expected_for
    calls: list[Any] = []

    def read_then_delete(source_key: Mapping[str, Any], kid: str) -> dict[str, Any] | None:
        out = real(source_key, kid)
        if not calls:
            ddb.delete_item(TableName=migration.source.name, Key=source_key)
        calls.append(out)
        return out

    verifier.expected_for = read_then_delete  # type: ignore[method-assign]
    # WHEN the repair runs THEN it notices the delete and takes its own write back
    assert Repairer(verifier, migration.writer)(diff) == "undone_source_deleted"
    assert calls[0] is not None and calls[1] is None
    assert held(migration, key) is None


def test_verify_under_continuous_live_traffic_reports_parity(migration: Migration) -> None:
    # GIVEN a live writer updating the source and a consumer applying each change ~50 ms later
    items = seed(migration, n=20)
    ddb = migration.clients.dynamodb
    stop = threading.Event()
    applied: list[int] = []

    def live() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            item = {**items[n % len(items)], "v": {"S": f"live-{n}"}}
            ddb.put_item(TableName=migration.source.name, Item=item)
            stop.wait(0.05)
            apply_to_destination(migration, item, pad_seq(str(1000 + n)))
            applied.append(n)
            stop.wait(0.02)

    writer = threading.Thread(target=live)
    writer.start()
    try:
        while len(applied) < 2:
            time.sleep(0.01)
        before = len(applied)

        def let_traffic_run(phase: str) -> None:
            # between the destination scan and the source scan: what live traffic looks like
            while len(applied) < before + 3:
                time.sleep(0.01)

        report = verify(
            migration,
            VerifyOptions(buckets=4, segments=2, recheck_wait=0.3),
            hooks=Hooks(after_destination_scan=let_traffic_run),
        )
        during = len(applied) - before
    finally:
        stop.set()
        writer.join()
    # THEN changes were made during the run, and none is reported as a difference
    assert during >= 3
    assert report.passed, report.examples
