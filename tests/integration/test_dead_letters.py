"""Dead letters, operated (issue 11): exact inputs, `livemigrate dead-letters` list / show /
replay / ack, automatic resolution, the cutover gate, and the code-version check."""

from __future__ import annotations

import importlib
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from livemigrate.aws import AwsClients
from livemigrate.config import Settings
from livemigrate.control import ControlStore
from livemigrate.deadletters import DeadLetters, record_to_json
from livemigrate.demo_data import enable_stream
from livemigrate.exitcodes import ExitCode
from livemigrate.gates import Policy, dead_letters_gate, read_snapshot
from livemigrate.migration import open_migration
from livemigrate.values import canonical_text, from_dynamodb_json, key_text
from livemigrate.verify import verify
from livemigrate.verify.engine import VerifyOptions
from livemigrate.versioning import SEQ_ATTR, user_attributes
from tests.services import StreamTail, create_table, scan_all, settings_for, unique
from tests.support.values import command, put_all

pytestmark = pytest.mark.integration

FAST = VerifyOptions(buckets=4, segments=1, recheck_wait=0.1, recheck_rounds=1, consumer_wait=0.5)
CONSUME = ("consume", "--until-caught-up", "--poll-interval", "0.05", "--apply-threads", "2")


def always_raises(item: dict[str, Any]) -> list[dict[str, Any]]:
    raise ValueError("this transform rejects everything")


def store_of(settings: Settings, clients: AwsClients) -> ControlStore:
    return ControlStore(clients.dynamodb, settings.control_table, settings.migration_id)


# -- item 4: the input is kept exactly ----------------------------------------------------------
EXACT: dict[str, Any] = {
    "pk": {"S": "p"},
    "sk": {"S": "s"},
    "n38": {"N": "0.12345678901234567890123456789012345678"},
    "big": {"N": "-98765432109876543210987654321098765432E+40"},
    "ns": {"NS": ["1.5", "10", "12345678901234567890123456789012345678"]},
    "ss": {"SS": ["b", "a"]},
    "bs": {"BS": [b"\x00\xff", b"\x01"]},
    "bin": {"B": b"\x00\x01\xfe"},
    "empty": {"S": ""},
    "emptyb": {"B": b""},
    "m": {"M": {"l": {"L": [{"N": "1.50"}, {"NULL": True}, {"BOOL": False}]}}},
}


def test_a_backfill_dead_letter_shows_its_input_exactly_in_dynamodb_json(
    clients: AwsClients, capsys: pytest.CaptureFixture[str]
) -> None:
    """GIVEN a source item with 38-digit numbers, number/string/binary sets, binary and nested
    values WHEN the transform raises on it during the backfill THEN `dead-letters show` prints
    the same DynamoDB value (before: numbers became floats, sets lists, binary hex: issue 11,
    item 4), and a stream record's letter keeps the record's text exactly."""
    source, dest = unique("dsrc"), unique("ddst")
    create_table(clients.dynamodb, source)
    create_table(clients.dynamodb, dest, stream=None)
    put_all(clients, source, [EXACT])
    s = settings_for(source, dest, transform="tests.integration.test_dead_letters:always_raises")
    # dead letters: the backfill finishes with "items not migrated" (issue 12's exit codes)
    done = command(s, clients, "backfill", "--without-consumer", "--total-segments", "1")
    assert done == ExitCode.NOT_MIGRATED
    (letter,) = DeadLetters(store_of(s, clients)).list()
    capsys.readouterr()
    assert command(s, clients, "dead-letters", "show", letter.id) == 0
    shown = json.loads(capsys.readouterr().out)
    assert canonical_text(from_dynamodb_json(shown)) == canonical_text(EXACT)
    assert shown["n38"] == {"N": "0.12345678901234567890123456789012345678"}

    # A stream record: its JSON (images in DynamoDB JSON, binary as base64) as received.
    clients.dynamodb.put_item(TableName=source, Item={**EXACT, "sk": {"S": "t"}})
    (record,) = [r for r in StreamTail(clients, source).drain() if r.keys["sk"] == {"S": "t"}]
    letters = DeadLetters(store_of(s, clients))
    letter_id = letters.add("stream", "test", dict(record.raw), record.keys)
    capsys.readouterr()
    assert command(s, clients, "dead-letters", "show", letter_id) == 0
    out = capsys.readouterr().out
    assert json.loads(out) == json.loads(json.dumps(record_to_json(record.raw), default=str))


# -- the whole loop: fail, fix, replay, gate ----------------------------------------------------
BROKEN = """
def transform(item):
    # v1: fails on every 10th item and on values it did not expect
    if int(item["sk"]) % 10 == 0 or item.get("v") == "boom":
        raise ValueError("unexpected shape")
    return [{**item, "schema": 2}]
"""
FIXED = """
def transform(item):
    # v2: the same output, without the failures
    return [{**item, "schema": 2}]
"""


def load(module: str, path: Path, code: str) -> None:
    """Write the transform's module; the next process (here: the next import) runs it."""
    path.write_text(code)
    sys.modules.pop(module, None)
    importlib.invalidate_caches()


def expected(clients: AwsClients, source: str) -> dict[str, str]:
    return {
        key_text({"pk": i["pk"], "sk": i["sk"]}): canonical_text({**i, "schema": {"N": "2"}})
        for i in scan_all(clients.dynamodb, source)
    }


def held(clients: AwsClients, dest: str) -> dict[str, str]:
    return {
        key_text({"pk": i["pk"], "sk": i["sk"]}): canonical_text(user_attributes(i))
        for i in scan_all(clients.dynamodb, dest)
        if "_lm_tomb" not in i
    }


def item(n: int, v: str = "ok") -> dict[str, Any]:
    return {"pk": {"S": f"p{n % 3}"}, "sk": {"S": f"{n:03d}"}, "v": {"S": v}}


def test_fix_the_transform_then_replay_brings_exact_parity_and_passes_the_gate(
    clients: AwsClients,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """GIVEN a transform that raises on 10% of the items during the backfill and on some
    stream records (one of them then superseded by a newer write, one item deleted after its
    backfill letter) WHEN the transform is fixed (same spec) and `dead-letters replay --all`
    runs THEN the destination equals transform(source) exactly, the gate passes without
    --ack-dead-letters, the stale record did not overwrite the newer write, and the deleted
    item was not resurrected."""
    module = f"lm_dlq_{uuid.uuid4().hex[:8]}"
    monkeypatch.syspath_prepend(str(tmp_path))
    load(module, tmp_path / f"{module}.py", BROKEN)
    source, dest = unique("dsrc"), unique("ddst")
    create_table(clients.dynamodb, source, stream=None)
    create_table(clients.dynamodb, dest, stream=None)
    put_all(clients, source, [item(n) for n in range(40)])  # 000, 010, 020, 030 fail
    enable_stream(clients.dynamodb, source)
    s = settings_for(source, dest, transform=f"{module}:transform")
    store = store_of(s, clients)

    assert command(s, clients, *CONSUME) == 0  # the consumer starts first (rule 9)
    backfilled = command(s, clients, "backfill", "--total-segments", "1", "--workers", "2")
    assert backfilled == ExitCode.NOT_MIGRATED  # 4 items dead-lettered
    # live writes: 001 fails then is superseded by a newer write; 002 fails; 050 is new and
    # fails; 020 (a backfill letter) is deleted from the source
    put_all(clients, source, [item(1, "boom"), item(1, "newer"), item(2, "boom"), item(50, "boom")])
    clients.dynamodb.delete_item(TableName=source, Key={"pk": {"S": "p2"}, "sk": {"S": "020"}})
    assert command(s, clients, *CONSUME) == 0
    letters = DeadLetters(store)
    by_origin = sorted(x.origin for x in letters.list())
    assert by_origin == ["backfill"] * 4 + ["stream"] * 3
    gate = dead_letters_gate(read_snapshot(store), Policy())
    assert not gate.met
    assert "7 unacknowledged dead letter(s)" in gate.why
    assert "dead-letters replay --all" in gate.fix
    newer = next(
        i for i in scan_all(clients.dynamodb, dest) if i["sk"] == {"S": "001"}
    )  # the newer write to 001 is in place
    assert newer["v"] == {"S": "newer"}

    # WHEN the transform is fixed (the same spec) and the letters are replayed
    load(module, tmp_path / f"{module}.py", FIXED)
    capsys.readouterr()
    assert command(s, clients, "dead-letters", "replay", "--all") == 0
    out = capsys.readouterr().out

    # THEN the newer write is kept, nothing is resurrected, parity is exact, the gate passes
    after = next(i for i in scan_all(clients.dynamodb, dest) if i["sk"] == {"S": "001"})
    assert after["v"] == {"S": "newer"}
    assert after[SEQ_ATTR] == newer[SEQ_ATTR]
    assert not [i for i in scan_all(clients.dynamodb, dest) if i["sk"] == {"S": "020"}]
    assert held(clients, dest) == expected(clients, source)
    assert "0 unresolved dead letter(s) remain" in out
    assert "source item no longer exists: nothing to replay" in out
    assert out.count("stale (a newer version is held) 1") == 1  # 001's first version
    migration = open_migration(s, clients, require_source_stream=False)
    assert verify(migration, FAST, search=False).passed
    assert dead_letters_gate(read_snapshot(store), Policy(ack_dead_letters=False)).met
    assert all(x.state == "resolved" for x in letters.list())
    capsys.readouterr()
    assert command(s, clients, "dead-letters", "list", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert {x["origin"] for x in listed} == {"backfill", "stream"}
    assert all(x["state"] == "resolved" and x["key"] and x["time"] > 0 for x in listed)


def test_a_letter_whose_item_is_since_newer_in_the_destination_resolves_itself(
    clients: AwsClients, capsys: pytest.CaptureFixture[str]
) -> None:
    """GIVEN a stream letter for version 1 of an item WHEN version 2 is applied later and the
    transform no longer fails THEN `dead-letters list` marks the letter resolved (no replay,
    no acknowledgement) and the gate counts nothing."""
    source, dest = unique("dsrc"), unique("ddst")
    create_table(clients.dynamodb, source)
    create_table(clients.dynamodb, dest, stream=None)
    s = settings_for(source, dest, transform="tests.support.values:identity")
    assert command(s, clients, *CONSUME) == 0
    put_all(clients, source, [{"pk": {"S": "a"}, "sk": {"S": "1"}, "v": {"N": "1"}}])
    (first,) = StreamTail(clients, source).drain()
    put_all(clients, source, [{"pk": {"S": "a"}, "sk": {"S": "1"}, "v": {"N": "2"}}])
    assert command(s, clients, *CONSUME) == 0  # applies both versions
    letters = DeadLetters(store_of(s, clients))
    letters.add("stream", "transform failed (then)", dict(first.raw), first.keys)
    assert letters.unresolved() == 1
    capsys.readouterr()
    assert command(s, clients, "dead-letters", "list") == 0
    assert "0 unresolved" in capsys.readouterr().out
    (letter,) = letters.list()
    assert letter.resolved.startswith("a version at least as new is in the destination")
    assert dead_letters_gate(read_snapshot(store_of(s, clients)), Policy()).met


def test_replay_refuses_while_a_live_consumer_runs_other_transform_code_and_ack_records_why(
    clients: AwsClients, capsys: pytest.CaptureFixture[str]
) -> None:
    """GIVEN a live source-consumer lease held by a process that recorded other transform code
    WHEN `dead-letters replay` runs THEN it refuses (exit 2) naming that process; once the
    lease is gone it replays. `ack` records the operator's reason and closes the letter."""
    source, dest = unique("dsrc"), unique("ddst")
    create_table(clients.dynamodb, source)
    create_table(clients.dynamodb, dest, stream=None)
    s = settings_for(source, dest, transform="livemigrate.examples.hot_outbox:transform")
    store = store_of(s, clients)
    store.ensure_table()
    letters = DeadLetters(store)
    letter_id = letters.add("search", "index rejected it", {"document": {"a": 1}}, {"pk": "x"})
    store.put("CODE#otherhost-41", {"host": "otherhost", "pid": 41, "code_hash": "0ld"})
    store.put(
        "SHARD#source#shard-1",
        {"lease_owner": "otherhost-41-abcdef", "lease_expires": time.time() + 60},
    )
    assert command(s, clients, "dead-letters", "replay", "--all") == 2
    err = capsys.readouterr().err
    assert "otherhost-41-abcdef" in err and "runs 0ld" in err and "restart" in err
    store.update("SHARD#source#shard-1", remove=("lease_owner", "lease_expires"))
    assert command(s, clients, "dead-letters", "replay", "--all") == 1  # search: not here
    assert "search resync" in capsys.readouterr().out
    assert command(s, clients, "dead-letters", "ack", letter_id, "--reason", "doc too big") == 0
    (letter,) = letters.list()
    assert letter.state == "acknowledged" and letter.ack_reason == "doc too big"
    assert letters.unresolved() == 0
    assert command(s, clients, "dead-letters", "ack", "DLQ#nope", "--reason", "x") == 2
