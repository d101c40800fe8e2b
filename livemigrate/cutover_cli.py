"""``livemigrate cutover``: the command's arguments, and the wiring of ``livemigrate.cutover``.

The fence flags (``--fenced``, ``--client-ttl``, ``--drain-timeout``, ...) are declared here once
(``add_fence_arguments``) and shared with ``livemigrate rollback`` (``livemigrate.rollback_cli``).
Exit codes (``livemigrate.exitcodes``): 0 flipped (or already cut over), 3 gates unmet or the
consumer did not drain (the fence is lifted), 130 interrupted (the fence is lifted), 6 a service
did not answer.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from livemigrate.argtypes import non_negative_float, positive_float
from livemigrate.aws import AwsClients
from livemigrate.config import Settings
from livemigrate.control import ControlStore
from livemigrate.cutover import (
    Cutover,
    CutoverOptions,
    CutoverResult,
    Waiting,
    failure_queue,
    lambda_watermarks,
    policy_for,
    require_started,
    search_switch,
)
from livemigrate.exitcodes import ExitCode
from livemigrate.flag import Flag, FlagStore, open_flag_store
from livemigrate.gates import unmet
from livemigrate.hooks import Hooks
from livemigrate.interrupts import raise_on_signals
from livemigrate.status import gate_dict, iso

DESCRIPTION = (
    "Check every cutover gate (backfill complete, consumer caught up, verified, no open dead "
    "letters, tombstones purged, search index ready, ...), then flip the active-table flag to "
    "the destination in one conditional write. Unmet gates are listed with what to do. "
    "--fenced pauses the applications' writers while the consumer drains, so no write is "
    "lost. Exit codes: 0 flipped (or already cut over), 3 gates unmet or the consumer did not "
    "drain (nothing flipped, fence lifted), 6 a service did not answer, 130 interrupted "
    "(fence lifted)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--dry-run", action="store_true", help="check the gates only; change nothing")
    add_fence_arguments(parser, "consumer")
    add(
        "--max-lag-seconds",
        type=non_negative_float,
        default=5.0,
        help="consumer lag bound (default: 5)",
    )
    add(
        "--ack-dead-letters",
        action="store_true",
        help="cut over despite dead letters (they are acknowledged only if the flag flips)",
    )
    add(
        "--when-gates-pass",
        action="store_true",
        help="wait, checking the gates every --check-every seconds, and cut over once they pass",
    )
    add(
        "--postpone-until-flag",
        metavar="FILE",
        help="wait while FILE exists (and the gates pass); cut over once it is removed",
    )
    add(
        "--check-every",
        type=positive_float,
        default=10.0,
        help="seconds between checks while waiting (default: 10)",
    )
    add(
        "--wait-timeout",
        type=non_negative_float,
        default=0.0,
        help="give up waiting after this many seconds, exit 3 (default: 0, wait forever)",
    )


def add_fence_arguments(parser: argparse.ArgumentParser, consumer: str) -> None:
    """The flags of a flag flip that ``cutover`` and ``rollback`` share.

    ``consumer`` names, in the help, the consumer whose drain the flip waits for.
    """
    add = parser.add_argument
    add(
        "--fenced",
        action="store_true",
        help=f"pause writers (livemigrate.client) while the {consumer} drains, so no write is lost",
    )
    add(
        "--max-heartbeat-age",
        type=positive_float,
        default=30.0,
        help=f"a {consumer} heartbeat older than this means it is not running (default: 30)",
    )
    add(
        "--client-ttl",
        type=non_negative_float,
        default=1.0,
        help="applications' flag cache TTL (default: 1)",
    )
    add(
        "--consumer-margin",
        type=non_negative_float,
        default=2.0,
        help=f"extra seconds a drained {consumer} report must postdate the last write it must "
        "apply (stream propagation; default: 2)",
    )
    add(
        "--checked-writes",
        action="store_true",
        help="every writer uses the client's checked writes (put/delete/update/transact): the "
        "fence stops them at once, so the write pause skips --client-ttl and its margin",
    )
    add(
        "--fence-seconds",
        type=positive_float,
        default=60.0,
        help="writers wait at most this long, even if this command dies (default: 60)",
    )
    add(
        "--drain-timeout",
        type=positive_float,
        default=60.0,
        help=f"give up (and lift the fence) if the {consumer} has not drained by then "
        "(default: 60)",
    )
    add(
        "--flag-store",
        choices=("control", "ssm"),
        default="control",
        help="where the applications read the flag: the control table or SSM (default: control)",
    )
    add("--json", action="store_true", help="print the result as JSON on stdout (text on stderr)")


def fence_options(args: argparse.Namespace, **more: Any) -> CutoverOptions:
    """The flip's options from the shared fence flags (``more``: the command's own)."""
    return CutoverOptions(
        fenced=args.fenced,
        client_ttl=args.client_ttl,
        consumer_margin=args.consumer_margin,
        checked_writes=args.checked_writes,
        fence_seconds=args.fence_seconds,
        drain_timeout=args.drain_timeout,
        **more,
    )


def open_flags(
    args: argparse.Namespace, settings: Settings, clients: AwsClients
) -> tuple[ControlStore, FlagStore]:
    """The migration's control store (it must have started) and the flag ``--flag-store``
    names."""
    store = ControlStore(clients.dynamodb, settings.control_table, settings.migration_id)
    require_started(store)
    flags = open_flag_store(
        args.flag_store, store, clients.ssm, settings.source_table, settings.destination_table
    )
    return store, flags


def run(args: argparse.Namespace, settings: Settings, clients: AwsClients) -> int:
    """The ``cutover`` command (exit codes: ``livemigrate.exitcodes``)."""
    raise_on_signals()  # Ctrl-C / SIGTERM lift the fence (Drain.abandon), then exit 130
    store, flags = open_flags(args, settings, clients)
    options = fence_options(
        args,
        dry_run=args.dry_run,
        policy=policy_for(
            settings,
            store,
            max_lag_seconds=args.max_lag_seconds,
            max_heartbeat_age=args.max_heartbeat_age,
            ack_dead_letters=args.ack_dead_letters,
        ),
        watermark_margin=(
            settings.kinesis_delivery_margin if settings.change_source == "kinesis" else None
        ),
    )
    started = time.monotonic()
    out = stderr if args.json else print
    cutover = Cutover(
        store,
        flags,
        options,
        search=search_switch(settings, store),
        out=out,
        watermarks=lambda_watermarks(settings, clients, store),
        failure_queue=failure_queue(settings),
    )
    hooks = Hooks.of(settings)
    waiting = waiting_of(args)
    if waiting is not None and not waiting.wait(cutover):
        out(f"cutover gave up after waiting {args.wait_timeout:g}s; nothing was changed")
        return ExitCode.GATES_UNMET
    try:
        result = cutover.run()
    except BaseException:
        hooks.fire("cutover_aborted")
        raise
    _fire(hooks, result)
    if args.json:
        print(json.dumps(_summary(result, time.monotonic() - started), sort_keys=True))
    return result.code


def waiting_of(args: argparse.Namespace) -> Waiting | None:
    """``--when-gates-pass`` / ``--postpone-until-flag``: how to wait, None for no wait."""
    if not (args.when_gates_pass or args.postpone_until_flag):
        return None
    path = Path(args.postpone_until_flag) if args.postpone_until_flag else None
    return Waiting(path, args.check_every, max(0.0, args.wait_timeout))


def _summary(result: CutoverResult, seconds: float) -> dict[str, Any]:
    return {
        "code": int(result.code),
        "gates": [gate_dict(g) for g in result.gates],
        "unmet": [g.name for g in unmet(result.gates)],
        "flag": flag_json(result.flag) if result.flag else None,
        "write_pause_seconds": result.write_pause,
        "drained": result.drained,
        "seconds": round(seconds, 3),
    }


def _fire(hooks: Hooks, result: CutoverResult) -> None:
    if not unmet(result.gates):
        hooks.fire("gates_pass")
    flag = result.flag
    # This run flipped (not "already cut over"): a fenced flip measured its pause, an
    # unfenced one waited for the drain.
    flipped = result.write_pause is not None or result.drained is not None
    if result.code == ExitCode.OK and flag is not None and flipped:
        hooks.fire(
            "cutover_done",
            active_table=flag.table,
            epoch=flag.epoch,
            write_pause_seconds=result.write_pause,
        )


def stderr(line: str) -> None:
    """Where the text goes when ``--json`` has stdout."""
    print(line, file=sys.stderr)


def flag_json(flag: Flag) -> dict[str, Any]:
    """The flag for ``--json``: numbers as numbers, times as ISO 8601 (UTC)."""
    data = flag.to_dict()
    for name in ("fenced_until", "fenced_at", "flipped_at"):
        data[name] = iso(float(data[name])) if data.get(name) else None
    return data
