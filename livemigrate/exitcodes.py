"""The exit codes of every ``livemigrate`` command: one table, so scripts can trust them.

``backfill && verify`` must not go green while items are missing, so "finished, but some items
were not migrated" has its own code, distinct from success. The table is repeated in README.md
("Exit codes"); a test checks that both agree.
"""

from __future__ import annotations

import enum

from botocore.exceptions import (
    ClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
)

from livemigrate.errors import ConflictError, LivemigrateError, ServiceUnreachable
from livemigrate.outage import is_transient


class ExitCode(enum.IntEnum):
    OK = 0
    DIFFERENCES = 1
    BAD_INPUT = 2
    GATES_UNMET = 3
    INCOMPLETE = 4
    NOT_MIGRATED = 5
    UNREACHABLE = 6
    RETENTION_RISK = 7
    INTERNAL = 70
    INTERRUPTED = 130


def for_error(exc: BaseException) -> ExitCode:
    if isinstance(exc, ServiceUnreachable):
        return ExitCode.UNREACHABLE
    if isinstance(exc, ConflictError):
        return ExitCode.BAD_INPUT
    if isinstance(exc, LivemigrateError):
        code = getattr(exc, "exit_code", ExitCode.BAD_INPUT)
        return ExitCode(code) if code in ExitCode._value2member_map_ else ExitCode.BAD_INPUT
    if isinstance(exc, KeyboardInterrupt):
        return ExitCode.INTERRUPTED
    if is_transient(exc):
        return ExitCode.UNREACHABLE
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError, NoRegionError)):
        return ExitCode.BAD_INPUT
    if isinstance(exc, ClientError):
        return ExitCode.BAD_INPUT
    return ExitCode.INTERNAL


def table_markdown() -> str:
    rows = ["| code | name | meaning |", "| --- | --- | --- |"]
    for code in ExitCode:
        meaning = " ".join((MEANINGS[code]).split())
        rows.append(f"| {int(code)} | `{code.name}` | {meaning} |")
    return "\n".join(rows)


MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "success: the command did everything it was asked",
    ExitCode.DIFFERENCES: (
        "`verify` found differences between source, destination or search; "
        "`dead-letters replay` left letters unresolved"
    ),
    ExitCode.BAD_INPUT: (
        "bad input, configuration or precondition (or a service refused the credentials); "
        "nothing was written; the message names the fix"
    ),
    ExitCode.GATES_UNMET: (
        "`cutover` / `rollback` refused: gates unmet or the consumer did not drain; "
        "the flag is as it was (fence lifted)"
    ),
    ExitCode.INCOMPLETE: (
        "stopped before the end with the position saved (backfill budget ran out, "
        "`--until-caught-up` not reached): run the command again"
    ),
    ExitCode.NOT_MIGRATED: (
        "finished, but items are not migrated: backfill with dead letters, verify with "
        "transform errors (see `livemigrate status`)"
    ),
    ExitCode.UNREACHABLE: (
        "a service (AWS endpoint, Elasticsearch) did not answer; nothing is lost, run again "
        "once it answers"
    ),
    ExitCode.RETENTION_RISK: (
        "`backfill` refused: its ETA, measured after the first pages, exceeds the change "
        "source's retention minus the margin (position saved); speed it up, or pass --force"
    ),
    ExitCode.INTERNAL: (
        "a bug in livemigrate: the traceback is written to a file whose name is printed"
    ),
    ExitCode.INTERRUPTED: (
        "stopped by Ctrl-C or SIGTERM; the position is saved, a cutover's or rollback's fence "
        "is lifted and the flag state printed"
    ),
}
