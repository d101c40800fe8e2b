"""Riding out a service outage (a network blip, an endpoint restart, a run of 5xx answers).

A long-running process (consumer, backfill, search sink, reverse consumer) must not die on a
blip: it backs off with capped, jittered delays, says it is degraded, and carries on when the
endpoint answers again. Only an outage longer than ``max_seconds`` ends it, with
``ServiceUnreachable`` (its position is already saved: checkpoints follow applies).

``is_transient`` decides what counts as an outage: connection refused/closed/reset, timeouts,
HTTP 5xx and throttling. Anything else (a validation error, a missing table) is a real error
and is raised as it is.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectionError,
    EndpointConnectionError,
    HTTPClientError,
    ReadTimeoutError,
)

from livemigrate.backoff import Backoff
from livemigrate.clock import Clock
from livemigrate.errors import ServiceUnreachable

log = logging.getLogger("livemigrate.outage")

_NETWORK = (
    EndpointConnectionError,
    ConnectionClosedError,
    ConnectionError,
    ReadTimeoutError,
    HTTPClientError,
)
_RETRYABLE_CODES = frozenset(
    {
        "InternalServerError",
        "InternalFailure",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "RequestTimeout",
        "RequestTimeoutException",
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "Throttling",
        "TooManyRequestsException",
        "LimitExceededException",
    }
)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is the service being unreachable or overloaded (retry later)."""
    if isinstance(exc, _NETWORK):
        return True
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return error.get("Code") in _RETRYABLE_CODES or status >= 500
    return isinstance(exc, BotoCoreError) and "connect" in type(exc).__name__.lower()


@dataclass
class Outage:
    """How long a service has been failing, and what to do about the next failure.

    Parameters
    ----------
    what:
        The service, for messages ("DynamoDB at http://...").
    clock:
        Monotonic time base (FakeClock in tests).
    max_seconds:
        An outage longer than this ends the process (``ServiceUnreachable``).
    base, cap:
        Back-off: ``base * 2**n`` capped at ``cap``, with jitter.
    """

    what: str
    clock: Clock
    max_seconds: float = 300.0
    base: float = 0.2
    cap: float = 10.0
    _since: float | None = field(default=None, init=False)
    _failures: int = field(default=0, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    @property
    def degraded(self) -> bool:
        with self._lock:
            return self._since is not None

    def seconds(self) -> float:
        """How long the current outage has lasted (0 when healthy)."""
        with self._lock:
            return 0.0 if self._since is None else self.clock.monotonic() - self._since

    def failed(self, exc: BaseException) -> float:
        """Record a transient failure; the delay to wait, or ServiceUnreachable past the limit."""
        now = self.clock.monotonic()
        with self._lock:
            if self._since is None:
                self._since = now
                log.warning("%s is failing (%s); degraded, retrying", self.what, exc)
            self._failures += 1
            lasted = now - self._since
            failures = self._failures
        if lasted > self.max_seconds:
            raise ServiceUnreachable(
                f"{self.what} has not answered for {lasted:.0f}s (last error: {exc})",
                "check the endpoint and the network, then run the command again: its position "
                "is saved",
            ) from exc
        return Backoff(self.base, self.cap).delay(failures)

    def recovered(self) -> None:
        """A call succeeded: the outage (if any) is over."""
        with self._lock:
            if self._since is None:
                return
            lasted = self.clock.monotonic() - self._since
            self._since = None
            self._failures = 0
        log.warning("%s answers again after %.1fs; carrying on", self.what, lasted)
