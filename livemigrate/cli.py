"""The ``livemigrate`` command: parses arguments, loads settings, builds clients, wires engines.

Engines live in their own packages and are imported only when their command runs, so the core
never depends on them at import time. An engine package provides ``<package>.cli`` with
``add_arguments(parser)`` and ``run(args, settings, clients) -> int``.

Every way a command can end maps to one ``ExitCode`` (``livemigrate.exitcodes``, README "Exit
codes"): errors an operator can act on print one message with the fix, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

from livemigrate import status
from livemigrate.argtypes import non_negative_int, positive_float
from livemigrate.aws import AwsClients, make_clients
from livemigrate.config import Settings, load_settings
from livemigrate.control import ControlStore
from livemigrate.errors import LivemigrateError
from livemigrate.exitcodes import ExitCode
from livemigrate.failures import explain
from livemigrate.gates import Gate
from livemigrate.tables import describe

log = logging.getLogger("livemigrate")

DESCRIPTION = (
    "No-downtime DynamoDB data migrations: backfill through your transform, apply live writes "
    "from the stream, verify, cut over with one flag flip, roll back."
)
EPILOG = (
    "Start with `livemigrate consume`, then `livemigrate backfill`; `livemigrate status` shows "
    "where a migration stands. Settings come from livemigrate.toml and LIVEMIGRATE_* variables "
    "(README: Configuration reference). Exit codes: README, Exit codes."
)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

ENGINE_COMMANDS: dict[str, tuple[str, str]] = {
    "backfill": ("backfill.cli", "copy historical items through the transform (resumable)"),
    "export": (
        "backfill.export.cli",
        "request a DynamoDB export of the source to S3 (for backfill --from-export), follow it",
    ),
    "consume": ("stream_consumer.cli", "apply the source stream to the destination, in order"),
    "reverse": (
        "stream_consumer.reverse_cli",
        "after the cutover, apply the destination's stream back to the source",
    ),
    "search": (
        "livemigrate.search.cli",
        "keep the search index equal to the destination (sync, resync, swap-alias, cleanup)",
    ),
    "verify": ("livemigrate.verify.cli", "prove parity of source, destination and search"),
    "cutover": ("livemigrate.cutover_cli", "check the gates and flip the active-table flag"),
    "rollback": ("livemigrate.rollback_cli", "flip the flag back"),
    "dead-letters": ("livemigrate.deadletters_cli", "list, show, replay or ack dead letters"),
    "throttle": (
        "livemigrate.throttle",
        "change a running backfill's rate caps, or pause / resume it",
    ),
    "demo": ("livemigrate.demo", "run a real migration end to end on the local services"),
}


def _version() -> str:
    try:
        return metadata.version("livemigrate")
    except metadata.PackageNotFoundError:
        return "unknown"


def _global_options(parser: argparse.ArgumentParser, default: Any) -> None:
    """--log-level and --migration-id, accepted before and after the command."""
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default=default if default is argparse.SUPPRESS else "INFO",
        help="how much to log on stderr (default: INFO)",
    )
    parser.add_argument(
        "--migration-id",
        default=default if default is argparse.SUPPRESS else None,
        help="the migration to act on (default: LIVEMIGRATE_MIGRATION_ID / livemigrate.toml)",
    )


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser; with ``only``, just that command's engine is imported (fast start)."""
    parser = argparse.ArgumentParser(prog="livemigrate", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"livemigrate {_version()}")
    _global_options(parser, None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    st = sub.add_parser(
        "status",
        help="where the migration stands: phase, progress, lag, dead letters, gates",
        description="What the control table knows about the migration (read-only).",
    )
    st.add_argument(
        "--json",
        action="store_true",
        help="print JSON on stdout (livemigrate/status.schema.json); with --watch one per line",
    )
    st.add_argument(
        "--watch",
        nargs="?",
        const=2.0,
        type=positive_float,
        metavar="SECONDS",
        help="refresh every SECONDS (default: 2) until Ctrl-C: a live dashboard",
    )
    st.add_argument(
        "--count",
        type=non_negative_int,
        default=0,
        help="with --watch: stop after this many refreshes",
    )
    _global_options(st, argparse.SUPPRESS)
    for name, (module, help_text) in ENGINE_COMMANDS.items():
        cmd = sub.add_parser(
            name, help=help_text, description=help_text[:1].upper() + help_text[1:]
        )
        _global_options(cmd, argparse.SUPPRESS)
        engine = _engine(module) if only in (None, name) else None
        if engine is not None:
            cmd.description = getattr(engine, "DESCRIPTION", cmd.description)
            engine.add_arguments(cmd)
    return parser


def _engine(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            return None
        raise


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if args.migration_id:
        overrides["migration_id"] = args.migration_id
    return load_settings(**overrides)


def run_status(args: argparse.Namespace) -> int:
    settings = _settings(args)
    clients = make_clients(settings)
    store = ControlStore(clients.dynamodb, settings.control_table, settings.migration_id)
    gate_check = _gate_check(settings, store)
    shown = 0
    while True:
        summary = status.collect(store, _source_items(clients, settings.source_table), gate_check)
        _show(summary, args, refresh=args.watch is not None)
        shown += 1
        if args.watch is None or (args.count and shown >= args.count):
            return ExitCode.OK
        try:
            time.sleep(max(0.1, args.watch))
        except KeyboardInterrupt:  # the way to leave a dashboard: not an interruption
            return ExitCode.OK
        if gate_check is None:
            gate_check = _gate_check(settings, store)  # the migration may have started


def _show(summary: dict[str, Any], args: argparse.Namespace, *, refresh: bool) -> None:
    if args.json:  # one JSON document per line (NDJSON) when watching
        indent = None if refresh else 2
        print(json.dumps(status.to_json(summary), indent=indent, sort_keys=True), flush=True)
        return
    text = status.render(summary)
    if refresh and sys.stdout.isatty():
        stamp = datetime.now(tz=UTC).strftime("%H:%M:%S UTC")
        text = f"\033[H\033[J{text}\n\n  refreshed {stamp}; Ctrl-C to leave"
    elif refresh:
        text += "\n"
    print(text, flush=True)


def _gate_check(settings: Settings, store: ControlStore) -> status.GateCheck | None:
    """The cutover's own gate computation (same policy, same search check), for status."""
    from livemigrate.cutover import evaluate_gates, failure_queue, policy_for, search_switch

    if not store.exists():
        return None
    policy = policy_for(settings, store)
    search = search_switch(settings, store)
    queue = failure_queue(settings)

    def check(now: float) -> list[Gate]:
        depth = None if queue is None else queue.depth()
        try:
            return evaluate_gates(store, policy, search, now, failed_batches=depth)
        except Exception as exc:  # status still reports; only the search gate is unknown
            failure = explain(exc)
            if failure.code != ExitCode.UNREACHABLE or search is None:
                raise
            gates = evaluate_gates(store, policy, None, now)
            down = Gate("search index ready", False, failure.problem, failure.fix)
            return [down if g.name == down.name else g for g in gates]

    return check


def _source_items(clients: AwsClients, table: str) -> int | None:
    """DynamoDB's approximate item count of the source, for progress; None if unknown."""
    try:
        return describe(clients.dynamodb, table, "source").item_count or None
    except LivemigrateError:
        return None


def _command_of(argv: Sequence[str] | None) -> str | None:
    """The command named in ``argv`` (None for --help or none), read before full parsing."""
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--log-level")
    first.add_argument("--migration-id")
    first.add_argument("command", nargs="?")
    known, _ = first.parse_known_args(argv)
    command: str | None = known.command
    return command if command in ENGINE_COMMANDS else None


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr
    )
    root = logging.getLogger().level
    for noisy in ("botocore", "boto3", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root))
    # The Elasticsearch client logs every retry with a traceback; the command says it once.
    logging.getLogger("elastic_transport").setLevel(
        logging.DEBUG if root <= logging.DEBUG else logging.ERROR
    )


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "status":
        return run_status(args)
    module, _ = ENGINE_COMMANDS[args.command]
    engine = _engine(module)
    if engine is None:
        raise LivemigrateError(
            f"livemigrate {args.command} is not installed (no module {module})",
            "reinstall livemigrate with all its packages (pip install livemigrate)",
        )
    if not getattr(engine, "NEEDS_SETTINGS", True):
        return int(engine.run(args, None, make_clients(None, max_pool=100)))
    settings = _settings(args)
    return int(engine.run(args, settings, make_clients(settings, max_pool=100)))


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the exit status (``ExitCode``)."""
    args = build_parser(_command_of(argv)).parse_args(argv)
    _logging(args.log_level)
    try:
        return int(_dispatch(args))
    except BrokenPipeError:
        # `livemigrate status | head`: the reader has what it wanted; stop writing quietly.
        _silence_stdout()
        return ExitCode.OK
    except KeyboardInterrupt:
        print(f"livemigrate {args.command}: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except Exception as exc:  # the edge of the program: every error becomes one message
        failure = explain(exc)
        log.debug("%s failed", args.command, exc_info=True)
        print(failure.text(args.command), file=sys.stderr)
        return failure.code


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush raises nothing."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
