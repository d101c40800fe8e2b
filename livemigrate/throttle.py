"""``livemigrate throttle``: change a running backfill's rate caps, or pause and resume it.

It writes the migration's ``RATES`` control-table item, which every backfill process re-reads
every few seconds (``livemigrate.ratelimit.RatesFromControl``), so the change reaches every
worker on every machine without a restart::

    livemigrate throttle --read-rate 200 --write-rate 100   # items/s; 0 = no cap
    livemigrate throttle --pause                              # reads and writes wait
    livemigrate throttle --resume

Without options it prints the current caps. ``livemigrate status`` shows them too.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from livemigrate.aws import AwsClients
from livemigrate.config import Settings
from livemigrate.control import ControlStore
from livemigrate.cutover import require_started
from livemigrate.exitcodes import ExitCode
from livemigrate.keys import RATES
from livemigrate.status import rates_line, rates_of, to_json

__all__ = ["add_arguments", "changes", "run"]


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 (no cap) or more items/s, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--read-rate", type=_rate, help="source items read per second (0: no cap)")
    parser.add_argument(
        "--write-rate", type=_rate, help="destination items written per second (0: no cap)"
    )
    pause = parser.add_mutually_exclusive_group()
    pause.add_argument("--pause", action="store_true", help="make every read and write wait")
    pause.add_argument("--resume", action="store_true", help="undo --pause")
    parser.add_argument("--json", action="store_true", help="print the caps as JSON on stdout")


def changes(args: argparse.Namespace) -> dict[str, Any]:
    """The ``RATES`` fields the options set (empty: only show the current caps)."""
    values: dict[str, Any] = {}
    if args.read_rate is not None:
        values["read_rate"] = args.read_rate
    if args.write_rate is not None:
        values["write_rate"] = args.write_rate
    if args.pause or args.resume:
        values["paused"] = bool(args.pause)
    return values


def run(args: argparse.Namespace, settings: Settings, clients: AwsClients) -> int:
    """The ``throttle`` command; 0, or 2 when nothing has run for the migration."""
    store = ControlStore(clients.dynamodb, settings.control_table, settings.migration_id)
    require_started(store)
    values = changes(args)
    if values:
        store.update(RATES, {**values, "updated_at": time.time()})
    rates = rates_of(store.get(RATES) or {})
    if args.json:
        print(json.dumps(to_json(rates), sort_keys=True))
    else:
        print(rates_line(rates).strip() + " (backfill processes pick this up within seconds)")
    return ExitCode.OK
