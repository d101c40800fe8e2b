"""Riding out an endpoint outage in the backfill (issue 10, item 11).

Every call a worker makes to DynamoDB (control table, source, destination) goes through
``Health``: a transient failure (``livemigrate.outage.is_transient``: connection refused or
closed, timeouts, 5xx, throttling after the rate limiter's own retries) is backed off with
capped, jittered delays and tried again; a page whose writes failed is read again from its
checkpoint. The process is degraded meanwhile: a warning in the log, and on PLAN
``degraded_at`` (wall time the outage began; written when it begins if the control table
answers, and again with ``recovered_at`` when it ends) and ``degraded_error``. Status shows a
backfill as degraded while ``degraded_at`` is newer than ``recovered_at``. Only an outage
longer than ``outage_seconds`` ends the run, with ``ServiceUnreachable``: positions are saved,
as checkpoints follow writes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from livemigrate.clock import Clock
from livemigrate.control import ControlStore
from livemigrate.keys import PLAN
from livemigrate.outage import Outage, is_transient

log = logging.getLogger(__name__)

T = TypeVar("T")

AWS_ERRORS = (ClientError, BotoCoreError)


class Interrupted(Exception):
    """A back-off ended after the caller's time was up (its budget)."""


class Health:
    """The endpoint's health as this process sees it, shared by all its workers.

    Parameters
    ----------
    store:
        Where the degraded/recovered times are recorded (PLAN).
    clock:
        Back-off sleeps and the outage's length.
    max_seconds:
        An outage longer than this ends the run (``ServiceUnreachable``).
    """

    def __init__(self, store: ControlStore, clock: Clock, max_seconds: float = 300.0) -> None:
        self.store = store
        self.clock = clock
        self.outage = Outage("DynamoDB (backfill)", clock, max_seconds)
        self._lock = threading.Lock()
        self._since: float | None = None  # wall time the current outage began

    @property
    def degraded(self) -> bool:
        return self.outage.degraded

    def call(self, fn: Callable[[], T], time_up: Callable[[], bool] = lambda: False) -> T:
        """``fn()``, retried after a back-off while it fails transiently.

        Raises
        ------
        ServiceUnreachable
            The outage lasted longer than ``max_seconds``.
        Interrupted
            ``time_up()`` was true after a back-off.
        """
        while True:
            try:
                result = fn()
            except AWS_ERRORS as exc:
                if not is_transient(exc):
                    raise
                self.failed(exc)
                if time_up():
                    raise Interrupted(f"time is up while {self.outage.what} is failing") from exc
                continue
            self.succeeded()
            return result

    def failed(self, exc: BaseException) -> None:
        """A transient failure: mark degraded (once), then sleep the back-off."""
        delay = self.outage.failed(exc)  # raises ServiceUnreachable past the limit
        with self._lock:
            began = self._since is None
            if began:
                self._since = self.clock.now()
            since = self._since
        if began:
            self._record({"degraded_at": since, "degraded_error": str(exc)[:300]})
        self.clock.sleep(delay)

    def succeeded(self) -> None:
        """A call went through: end the outage (if any) and record when."""
        with self._lock:
            since, self._since = self._since, None
        if since is None:
            return
        self.outage.recovered()
        # Both times in one write: the first may never have reached the control table.
        if not self._record({"degraded_at": since, "recovered_at": self.clock.now()}):
            with self._lock:
                self._since = self._since if self._since is not None else since

    def _record(self, values: dict[str, object]) -> bool:
        """One attempt to note the outage on PLAN (the endpoint may still be down)."""
        try:
            self.store.update(PLAN, values)
        except AWS_ERRORS as exc:
            if not is_transient(exc):
                raise
            log.info("could not record %s on PLAN (%s)", sorted(values), exc)
            return False
        return True
