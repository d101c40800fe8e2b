"""What to tell an operator when a command ends on an exception that is not a LivemigrateError.

A service being down, a table that does not exist yet or missing credentials are the operator's
to fix, so they get one message with the fix and an exit code from ``ExitCode``, never a
traceback. Anything else is a bug: its traceback goes to a file whose name is printed.
"""

from __future__ import annotations

import os
import re
import tempfile
import traceback
from dataclasses import dataclass

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
)

from livemigrate.errors import LivemigrateError
from livemigrate.exitcodes import ExitCode, for_error
from livemigrate.outage import is_transient

_CREDENTIAL_CODES = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "ExpiredTokenException",
        "AccessDeniedException",
        "AccessDenied",
        "MissingAuthenticationTokenException",
    }
)


@dataclass(frozen=True)
class Failure:
    """One message for the operator: the problem, the fix and the exit code."""

    problem: str
    fix: str
    code: ExitCode

    def text(self, command: str) -> str:
        fix = f"\n  fix: {self.fix}" if self.fix else ""
        return f"livemigrate {command}: error: {self.problem}{fix}"


def explain(exc: BaseException) -> Failure:
    """The operator's message for ``exc`` (see the module docstring)."""
    if isinstance(exc, LivemigrateError):
        return Failure(exc.problem, exc.fix, for_error(exc))
    search = _search_failure(exc)
    if search is not None:
        return search
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return Failure(
            f"no usable AWS credentials ({exc})",
            "set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
            ExitCode.BAD_INPUT,
        )
    if isinstance(exc, NoRegionError):
        return Failure("no AWS region is configured", "set AWS_REGION", ExitCode.BAD_INPUT)
    if is_transient(exc):
        return Failure(
            f"the AWS endpoint {endpoint(exc)} did not answer ({exc})",
            "check that the endpoint is up and reachable (AWS_ENDPOINT_URL / "
            "LIVEMIGRATE_ENDPOINT_URL, network, VPN), then run the command again",
            ExitCode.UNREACHABLE,
        )
    if isinstance(exc, ClientError):
        return _client_failure(exc)
    if isinstance(exc, BotoCoreError):
        return Failure(f"AWS client error: {exc}", "check the AWS settings", ExitCode.BAD_INPUT)
    return Failure(
        f"internal error: {type(exc).__name__}: {exc}",
        f"this is a bug in livemigrate; the traceback is in {_save_traceback(exc)} "
        "(please attach it to a report)",
        ExitCode.INTERNAL,
    )


def short(exc: BaseException) -> str:
    """A one-line reason: the OS error inside a chain of wrapped connection errors if any."""
    text = str(exc)
    found = re.search(r"\[Errno -?\d+\][^)'\"]*", text)
    if found:
        return found.group(0).strip()
    return text if len(text) <= 200 else text[:200] + "..."


def endpoint(exc: BaseException) -> str:
    """The endpoint a botocore error was about, or a description of the default one."""
    if isinstance(exc, EndpointConnectionError):
        return str(exc.kwargs.get("endpoint_url", ""))
    return os.environ.get("AWS_ENDPOINT_URL", "(AWS default)")


def _client_failure(exc: ClientError) -> Failure:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    message = str(error.get("Message", exc))
    if code == "ResourceNotFoundException":
        return Failure(
            f"DynamoDB says: {message}",
            "check the table names in the configuration (`livemigrate status` shows what has "
            "run); a migration starts with `livemigrate consume`, then `livemigrate backfill`",
            ExitCode.BAD_INPUT,
        )
    if code in _CREDENTIAL_CODES:
        return Failure(
            f"AWS refused the credentials or the permission ({code}: {message})",
            "check AWS_PROFILE / AWS_ACCESS_KEY_ID and the IAM policy of this role",
            ExitCode.BAD_INPUT,
        )
    return Failure(
        f"AWS refused a request ({code}: {message})",
        "check the configuration; `livemigrate status` shows the migration's state",
        ExitCode.BAD_INPUT,
    )


def _search_failure(exc: BaseException) -> Failure | None:
    from livemigrate.errors import SearchRequestError, SearchUnavailable

    unreachable = Failure(
        f"{getattr(exc, 'engine', 'Elasticsearch')} did not answer ({short(exc)})",
        "check that the node is up and LIVEMIGRATE_SEARCH_URL points at it "
        "(`verify --no-search` checks the tables alone)",
        ExitCode.UNREACHABLE,
    )
    if isinstance(exc, SearchUnavailable):
        return unreachable
    if isinstance(exc, SearchRequestError):
        # 401/403: Amazon OpenSearch Service refused the signature or the role.
        fix = (
            "check the credentials and the domain's access policy (LIVEMIGRATE_SEARCH_AUTH, "
            "LIVEMIGRATE_SEARCH_REGION, LIVEMIGRATE_SEARCH_SERVICE)"
            if exc.status in (401, 403)
            else "check the index configuration and the search settings"
        )
        return Failure(f"the search node refused a request ({exc})", fix, ExitCode.BAD_INPUT)
    try:
        from elastic_transport import ConnectionError as SearchConnectionError
        from elastic_transport import ConnectionTimeout
    except ImportError:  # pragma: no cover - elasticsearch is a dependency
        return None
    if isinstance(exc, (SearchConnectionError, ConnectionTimeout)):
        return unreachable
    return None


def _save_traceback(exc: BaseException) -> str:
    handle, path = tempfile.mkstemp(prefix="livemigrate-crash-", suffix=".txt")
    with os.fdopen(handle, "w") as out:
        out.write("".join(traceback.format_exception(exc)))
    return path
