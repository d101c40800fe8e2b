"""``livemigrate rollback``: the command's arguments, and the wiring of
``livemigrate.cutover_rollback``.

The fence flags are the cutover's (``livemigrate.cutover_cli.add_fence_arguments``). Exit codes
(``livemigrate.exitcodes``): 0 rolled back, 3 refused (listing why), 130 interrupted (the fence
is lifted), 6 a service did not answer.
"""

from __future__ import annotations

import argparse
import json

from livemigrate.argtypes import non_negative_float
from livemigrate.aws import AwsClients
from livemigrate.config import Settings
from livemigrate.cutover import inverse_configured, search_switch
from livemigrate.cutover_cli import (
    add_fence_arguments,
    fence_options,
    flag_json,
    open_flags,
    stderr,
)
from livemigrate.cutover_rollback import Rollback
from livemigrate.exitcodes import ExitCode
from livemigrate.hooks import Hooks
from livemigrate.interrupts import raise_on_signals

DESCRIPTION = (
    "Flip the active-table flag back to the source. With the reverse consumer running "
    "(`livemigrate reverse`) nothing written to the destination since the cutover is lost; "
    "without it the rollback is refused after --window-seconds unless --force. Exit codes: "
    "0 rolled back, 3 refused (the reasons are listed), 6 a service did not answer, 130 "
    "interrupted (fence lifted)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--window-seconds",
        type=non_negative_float,
        default=3600.0,
        help="without a reverse consumer: refuse once the cutover is older than this "
        "(default 3600)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="roll back although writes since the cutover would be lost",
    )
    parser.add_argument(
        "--inverse-transform",
        help="pkg.mod:fn the reverse consumer runs (default: LIVEMIGRATE_INVERSE_TRANSFORM)",
    )
    add_fence_arguments(parser, "reverse consumer")


def run(args: argparse.Namespace, settings: Settings, clients: AwsClients) -> int:
    """The ``rollback`` command (exit codes: ``livemigrate.exitcodes``)."""
    raise_on_signals()  # Ctrl-C / SIGTERM lift the fence (Drain.abandon), then exit 130
    store, flags = open_flags(args, settings, clients)
    rollback = Rollback(
        store,
        flags,
        window_seconds=args.window_seconds,
        force=args.force,
        inverse_transform=args.inverse_transform or inverse_configured(settings, store),
        options=fence_options(args),
        max_heartbeat_age=args.max_heartbeat_age,
        search=search_switch(settings, store),
        out=stderr if args.json else print,
    )
    code = rollback.run()
    if args.json:
        result = {
            "code": int(code),
            "outcome": ExitCode(code).name,
            "flag": flag_json(flags.read()),
            "write_pause_seconds": rollback.write_pause,
        }
        print(json.dumps(result, sort_keys=True))
    if code == ExitCode.OK:
        Hooks.of(settings).fire(
            "rollback_done",
            active_table=settings.source_table,
            write_pause_seconds=rollback.write_pause,
        )
    return code
