"""The ``livemigrate`` command: parses arguments, loads settings, builds clients, wires engines.

Engines live in their own packages and are imported only when their command runs, so the core
never depends on them at import time. An engine package provides ``<package>.cli`` with
``add_arguments(parser)`` and ``run(args, settings, clients) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from livemigrate import status
from livemigrate.aws import AwsClients, make_clients
from livemigrate.config import Settings, load_settings
from livemigrate.control import ControlStore
from livemigrate.errors import LivemigrateError
from livemigrate.tables import describe

log = logging.getLogger("livemigrate")

# command -> (module that implements it, one-line help). The module is imported on use.
ENGINE_COMMANDS: dict[str, tuple[str, str]] = {
    "backfill": ("backfill.cli", "copy historical items through the transform (resumable)"),
    "consume": ("stream_consumer.cli", "apply the source stream to the destination, in order"),
    "reverse": (
        "stream_consumer.reverse",
        "after the cutover, apply the destination's stream back to the source",
    ),
    "search": ("livemigrate.search.cli", "sync or resync the search index from the destination"),
    "verify": ("livemigrate.verify", "prove parity of source, destination and search"),
    "cutover": ("livemigrate.cutover", "check the gates and flip the active-table flag"),
    "rollback": ("livemigrate.cutover_rollback", "flip the flag back"),
    "dead-letters": ("livemigrate.deadletters_cli", "list, show, replay or ack dead letters"),
    "demo": ("livemigrate.demo", "run a real migration end to end on the local services"),
}

EXIT_NOT_BUILT = 3


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser; with ``only``, just that command's engine is imported (fast start)."""
    parser = argparse.ArgumentParser(prog="livemigrate", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    parser.add_argument("--migration-id", help="override LIVEMIGRATE_MIGRATION_ID for this command")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    st = sub.add_parser("status", help="what the control table knows about the migration")
    st.add_argument("--json", action="store_true", help="print the summary as JSON")
    for name, (module, help_text) in ENGINE_COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text)
        engine = _engine(module) if only in (None, name) else None
        if engine is not None:
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
    summary = status.collect(store, _source_items(clients, settings.source_table))
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True, default=str))
    else:
        print(status.render(summary))
    return 0


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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser(_command_of(argv)).parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("botocore", "boto3", "urllib3", "elastic_transport"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        if args.command == "status":
            return run_status(args)
        module, _ = ENGINE_COMMANDS[args.command]
        engine = _engine(module)
        if engine is None:
            print(
                f"livemigrate {args.command}: not built yet (no module {module}); "
                "see the open issues",
                file=sys.stderr,
            )
            return EXIT_NOT_BUILT
        if not getattr(engine, "NEEDS_SETTINGS", True):
            return int(engine.run(args, None, make_clients(None, max_pool=100)))
        settings = _settings(args)
        return int(engine.run(args, settings, make_clients(settings, max_pool=100)))
    except LivemigrateError as exc:
        print(f"livemigrate {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
