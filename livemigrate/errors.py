"""Domain errors. Each one says what is wrong and what to do about it."""

from __future__ import annotations


class LivemigrateError(Exception):
    """Base class: an error an operator can act on.

    Parameters
    ----------
    problem:
        What is wrong, in one sentence.
    fix:
        What to do about it.
    """

    exit_code = 2

    def __init__(self, problem: str, fix: str = "") -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}\n  fix: {fix}" if fix else problem)


class ConfigError(LivemigrateError):
    """The configuration is invalid or incomplete."""


class PreflightError(LivemigrateError):
    """A check before any write failed (missing table, stream disabled, ...)."""


class TransformLoadError(LivemigrateError):
    """The transform named in the configuration cannot be imported."""


class TransformOutputError(Exception):
    """One item's transform raised or returned invalid output; the item is dead-lettered."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class ConflictError(LivemigrateError):
    """Another migration or process holds what this one needs."""


class LeaseLost(Exception):
    """A lease this process held was taken over (its conditional write failed)."""


class ServiceUnreachable(LivemigrateError):
    """A service (DynamoDB endpoint, Elasticsearch) did not answer."""


# The search node's failures: in the core so that the exit-code mapping (livemigrate.failures)
# names them without importing the search engine.
class SearchUnavailable(Exception):
    """The whole request failed for a reason that may pass (connection, 429, 5xx)."""

    def __init__(self, reason: str, engine: str = "the search node") -> None:
        self.engine = engine  # who did not answer, for the operator's message
        super().__init__(reason)


class SearchRequestError(Exception):
    """The node refused a request for good (4xx other than 429)."""

    def __init__(self, status: int, error_type: str, reason: str) -> None:
        self.status = status
        self.error_type = error_type
        self.reason = reason
        super().__init__(f"{status} {error_type}: {reason}")
