"""``livemigrate verify``: the command's arguments, and the wiring of ``livemigrate.verify``.

Exit codes (``livemigrate.exitcodes``): 0 parity, 1 differences, 5 parity of what transforms
but source items whose transform fails (they are not in the destination), 2 bad input, 6 a
service did not answer.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from livemigrate.argtypes import non_negative_float, non_negative_int, positive_int
from livemigrate.aws import AwsClients
from livemigrate.config import Settings
from livemigrate.exitcodes import ExitCode
from livemigrate.migration import open_migration
from livemigrate.status import to_json
from livemigrate.verify import exit_code, open_for_verify, render, verify
from livemigrate.verify.engine import VerifyOptions

DESCRIPTION = (
    "Prove that transform(source) equals the destination (and the search index), while live "
    "writes continue: differing buckets are rechecked before they count. The result is what "
    "the cutover's verify gate reads. Read-only unless --repair. Exit codes: 0 parity, "
    "1 differences, 5 parity but source items fail the transform (dead letters), 2 bad input, "
    "6 a service did not answer."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--json", action="store_true", help="print the report as JSON on stdout")
    add(
        "--repair",
        action="store_true",
        help="fix missing items and backfill-written differences through the version rule "
        "(the search index is not repaired: run `livemigrate search resync` for it)",
    )
    add("--buckets", type=positive_int, help="digest buckets (default: chosen from the table size)")
    add(
        "--segments",
        type=positive_int,
        help="parallel scan segments (default: the `workers` setting)",
    )
    add(
        "--recheck-wait",
        type=non_negative_float,
        default=2.0,
        help="seconds between rechecks of a difference (default: 2)",
    )
    add(
        "--recheck-rounds",
        type=non_negative_int,
        default=3,
        help="rechecks of a difference (default: 3)",
    )
    add("--examples", type=non_negative_int, default=5, help="examples shown per kind (default: 5)")
    add(
        "--max-items-in-memory",
        type=positive_int,
        default=200_000,
        help="items of differing buckets held at once (default: 200000)",
    )
    add(
        "--consumer-wait",
        type=non_negative_float,
        default=30.0,
        help="longest wait for the consumer to pass a difference before a recheck (default: 30)",
    )
    add("--no-search", action="store_true", help="skip the search index check")


def options_from(args: argparse.Namespace, settings: Settings) -> VerifyOptions:
    return VerifyOptions(
        buckets=args.buckets,
        segments=args.segments or settings.workers,
        recheck_wait=args.recheck_wait,
        recheck_rounds=args.recheck_rounds,
        max_items_in_memory=args.max_items_in_memory,
        examples=args.examples,
        consumer_wait=args.consumer_wait,
    )


def run(args: argparse.Namespace, settings: Settings, clients: AwsClients) -> int:
    """CLI entry; see the module docstring for exit codes."""
    if args.repair:
        migration = open_migration(settings, clients, require_source_stream=False)
    else:
        migration = open_for_verify(settings, clients)
    report = verify(
        migration, options_from(args, settings), repair=args.repair, search=not args.no_search
    )
    code = exit_code(report)
    if args.json:
        print(json.dumps(to_json(asdict(report)), indent=2, sort_keys=True))
    else:
        print(render(report))
    if code == ExitCode.NOT_MIGRATED:
        print(
            f"verify: {report.transform_errors} source item(s) fail the transform and are NOT "
            "in the destination (they are dead letters).\n  fix: see them with `livemigrate "
            "status`, fix the transform or the items, or acknowledge them at the cutover",
            file=sys.stderr,
        )
    return code
