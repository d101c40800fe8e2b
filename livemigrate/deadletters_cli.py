"""``livemigrate dead-letters``: read, replay and acknowledge a migration's dead letters.

Usage::

    livemigrate dead-letters list [--json] [--unresolved]   # id, origin, state, reason, key, time
    livemigrate dead-letters show ID                         # the input exactly, DynamoDB JSON
    livemigrate dead-letters replay ID... | --all            # current transform, version rule
    livemigrate dead-letters ack ID... --reason TEXT         # accept the loss, with a reason

``list`` and ``replay`` first resolve letters whose item is since in the destination at a
newer version (``livemigrate.replay``). ``replay`` refuses while a live backfill worker or
source consumer runs other transform code than this command (fix the transform, restart them
with the same spec, then replay); ``--ignore-code-version`` overrides.

Exit codes (``livemigrate.exitcodes``): 0 done (replay: every letter resolved); 1 some letters
stay unresolved; 2 bad input (unknown id, processes running other code).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from livemigrate.aws import AwsClients
from livemigrate.clock import SystemClock
from livemigrate.config import Settings
from livemigrate.control import ControlStore
from livemigrate.counters import ConsumerMetric
from livemigrate.deadletters import DeadLetter, DeadLetters, stale_processes
from livemigrate.errors import ConfigError, ConflictError
from livemigrate.exitcodes import ExitCode
from livemigrate.records import StreamRecord
from livemigrate.replay import Replayer

if TYPE_CHECKING:
    from livemigrate.migration import Migration
    from stream_consumer.applier import DestinationApplier


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = sub.add_parser("list", help="id, origin, state, reason, key and time of every letter")
    ls.add_argument("--json", action="store_true", help="one JSON document")
    ls.add_argument("--unresolved", action="store_true", help="only letters still open")
    ls.add_argument(
        "--no-check", action="store_true", help="do not re-check letters against the destination"
    )
    show = sub.add_parser("show", help="the input of one letter, exactly, in DynamoDB JSON")
    show.add_argument("id")
    replay = sub.add_parser("replay", help="re-run the current transform through the version rule")
    replay.add_argument("ids", nargs="*", metavar="ID")
    replay.add_argument("--all", action="store_true", help="every unresolved letter")
    replay.add_argument(
        "--ignore-code-version",
        action="store_true",
        help="replay even while live processes run other transform code",
    )
    ack = sub.add_parser("ack", help="acknowledge letters (the cutover gate then ignores them)")
    ack.add_argument("ids", nargs="+", metavar="ID")
    ack.add_argument("--reason", required=True, help="why losing these items is acceptable")


def run(args: argparse.Namespace, settings: Settings, clients: AwsClients) -> int:
    store = ControlStore(clients.dynamodb, settings.control_table, settings.migration_id)
    letters = DeadLetters(store)
    action: str = args.action
    if action == "show":
        return _show(_one(letters, args.id))
    if action == "ack":
        return _ack(letters, args.ids, args.reason)
    if action == "list":
        return _list(letters, settings, clients, args)
    return _replay(letters, settings, clients, args)


def _one(letters: DeadLetters, letter_id: str) -> DeadLetter:
    letter = letters.get(letter_id)
    if letter is None:
        raise ConfigError(
            f"no dead letter {letter_id!r} in this migration",
            "take the id from `livemigrate dead-letters list`",
        )
    return letter


def _show(letter: DeadLetter) -> int:
    for line in _describe(letter):
        print(f"# {line}", file=sys.stderr)
    if letter.kind == "json":
        print(letter.input)
    else:
        print(json.dumps(letter.dynamodb_json(), indent=2, sort_keys=True))
    return ExitCode.OK


def _describe(letter: DeadLetter) -> list[str]:
    lines = [
        f"{letter.id} ({letter.origin}, {letter.state}) at {_when(letter.at)}",
        f"reason: {letter.reason}",
        f"key: {letter.key}",
    ]
    if letter.resolved:
        lines.append(f"resolved: {letter.resolved}")
    if letter.acknowledged:
        lines.append(f"acknowledged: {letter.ack_reason}")
    if letter.last_error:
        lines.append(f"last replay failed: {letter.last_error}")
    if letter.raw_truncated:
        lines.append("input truncated (over 300 KB compressed)")
    return lines


def _ack(letters: DeadLetters, ids: list[str], reason: str) -> int:
    found = [_one(letters, i) for i in ids]  # all or nothing: check every id first
    by = f"{os.environ.get('USER', 'operator')} via dead-letters ack"
    for letter in found:
        letters.acknowledge(letter.id, reason, by)
        print(f"acknowledged {letter.id}: {reason}")
    return ExitCode.OK


def _list(
    letters: DeadLetters, settings: Settings, clients: AwsClients, args: argparse.Namespace
) -> int:
    if not args.no_check and any(x.unresolved for x in letters.list()):
        migration = _open(letters, settings, clients)
        replayer = Replayer(migration, letters, _no_records)
        for letter in letters.list():
            replayer.check(letter)
        for line in _stale_lines(migration):
            print(f"warning: {line}", file=sys.stderr)
    shown = [x for x in letters.list() if x.unresolved or not args.unresolved]
    if args.json:
        print(json.dumps([_as_json(x) for x in shown], indent=2, sort_keys=True))
        return ExitCode.OK
    still_open = sum(1 for x in shown if x.unresolved)
    print(f"{len(shown)} dead letter(s), {still_open} unresolved")
    for letter in shown:
        print(
            f"{letter.id}  {letter.origin:<8} {letter.state:<12} {_when(letter.at)}  "
            f"key={letter.key}  {letter.reason}"
        )
    if still_open:
        print(
            "next: `livemigrate dead-letters show ID`; fix the transform and restart the "
            "consumers, then `livemigrate dead-letters replay --all`; or "
            "`livemigrate dead-letters ack ID... --reason TEXT`"
        )
    return ExitCode.OK


def _as_json(letter: DeadLetter) -> dict[str, Any]:
    return {
        "id": letter.id,
        "origin": letter.origin,
        "state": letter.state,
        "reason": letter.reason,
        "key": json.loads(letter.key) if letter.key.startswith("{") else letter.key,
        "time": letter.at,
        "resolved": letter.resolved,
        "acknowledged": letter.acknowledged,
        "ack_reason": letter.ack_reason,
        "last_error": letter.last_error,
        "code_hash": letter.code_hash,
    }


def _replay(
    letters: DeadLetters, settings: Settings, clients: AwsClients, args: argparse.Namespace
) -> int:
    if bool(args.ids) == bool(args.all):
        raise ConfigError("name letters to replay, or --all", "e.g. dead-letters replay --all")
    chosen = [_one(letters, i) for i in args.ids] if args.ids else list(letters.list())
    migration = _open(letters, settings, clients)
    if not args.ignore_code_version:
        _require_same_code(migration)
    applier = _record_applier(migration)
    try:
        replayer = Replayer(migration, letters, partial(_apply, applier))
        still_open = sum(1 for letter in chosen if not _replay_one(replayer, letter))
    finally:
        applier.close()
    remaining = letters.unresolved()
    print(f"{remaining} unresolved dead letter(s) remain")
    return ExitCode.DIFFERENCES if still_open else ExitCode.OK


def _replay_one(replayer: Replayer, letter: DeadLetter) -> bool:
    """Replay one letter unless it is closed already; whether it is resolved now."""
    if not letter.unresolved:
        return True
    result = replayer.replay(letter)
    verdict = "resolved" if result.resolved else "still unresolved"
    print(f"{letter.id}: {verdict}: {result.detail}")
    return result.resolved


# What a replayed record's writes did, as the consumer counts them.
_OUTCOMES: dict[str, ConsumerMetric] = {
    "applied": "writes_applied_total",
    "stale (a newer version is held)": "writes_stale_total",
    "tombstoned": "tombstones_written_total",
    "deleted": "deletes_total",
}


def _apply(applier: DestinationApplier, record: StreamRecord) -> str:
    before = {name: applier.metrics.value(name) for name in _OUTCOMES.values()}
    applier.apply([record])
    done = {label: applier.metrics.value(name) - before[name] for label, name in _OUTCOMES.items()}
    return ", ".join(f"{label} {count:g}" for label, count in done.items() if count) or "no writes"


def _stale_lines(migration: Migration) -> list[str]:
    """One line per live backfill worker or source consumer running other transform code."""
    stale = stale_processes(migration.store, migration.transformer.code_hash, time.time())
    return [f"{p.owner} (lease {p.lease}) runs {p.code_hash or 'unrecorded code'}" for p in stale]


def _require_same_code(migration: Migration) -> None:
    stale = _stale_lines(migration)
    if not stale:
        return
    mine = migration.transformer.code_hash
    raise ConflictError(
        f"live processes run other transform code than this command ({mine}): " + "; ".join(stale),
        "restart them so they load the fixed transform (same transform spec), then replay; "
        "or pass --ignore-code-version",
    )


def _open(letters: DeadLetters, settings: Settings, clients: AwsClients) -> Migration:
    from livemigrate.migration import open_migration

    migration = open_migration(settings, clients, require_source_stream=False)
    letters.code_hash = migration.transformer.code_hash
    return migration


def _no_records(record: StreamRecord) -> str:
    raise AssertionError("checking letters applies nothing")


def _record_applier(migration: Migration) -> DestinationApplier:
    """The consumer's own applier, so a replayed record meets the same version rule."""
    from stream_consumer.applier import DeleteMode, DestinationApplier
    from stream_consumer.metrics import Metrics

    class ReplayDeleteMode(DeleteMode):
        # Tombstones while the backfill runs, like the consumer, without recording a switch
        # on the consumer's item (only the consumer itself does that).
        def real_deletes(self) -> bool:
            return migration.backfill_complete()

    mode = ReplayDeleteMode(migration.backfill_complete, migration.store, "source", SystemClock())
    return DestinationApplier(
        migration.transformer, migration.writer, mode, Metrics("dead-letters"), threads=1
    )


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
