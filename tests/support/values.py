"""Commands run in this process, an identity transform, raw puts (the value round-trip tests)."""

from __future__ import annotations

import importlib
import sys
from typing import Any

from livemigrate.aws import AwsClients
from livemigrate.cli import ENGINE_COMMANDS, build_parser
from livemigrate.config import Settings
from livemigrate.errors import LivemigrateError


def identity(item: dict[str, Any]) -> list[dict[str, Any]]:
    return [item]


def command(settings_: Settings, clients: AwsClients, *argv: str) -> int:
    """``livemigrate <argv>`` with these settings, in this process (as ``cli.main`` runs it)."""
    args = build_parser(argv[0]).parse_args(list(argv))
    engine = importlib.import_module(ENGINE_COMMANDS[argv[0]][0])
    try:
        return int(engine.run(args, settings_, clients))
    except LivemigrateError as exc:
        print(f"livemigrate {argv[0]}: error: {exc}", file=sys.stderr)
        return exc.exit_code


def put_all(clients: AwsClients, table: str, items: list[dict[str, Any]]) -> None:
    for item in items:
        clients.dynamodb.put_item(TableName=table, Item=item)
