"""The small library applications use to follow the cutover flag.

>>> active = ActiveTable.from_control_table(dynamodb, "livemigrate-control", "orders-v2")
>>> active.active_table()                      # cached for ``ttl`` seconds
'orders'
>>> active.put(lambda table: item_for(table))  # checked: lands only where the flag points
'orders'

Reads use ``active_table()``: at most ``ttl`` seconds stale.

Checked writes (``put``, ``delete``, ``update``, ``transact``) are the safe way to write during a
migration. Each is one ``TransactWriteItems`` call that carries, besides the write, a condition
check on the flag item's epoch: DynamoDB applies the write only if the flag still has the epoch
the client read, i.e. it lands only on the table the flag names *when it lands*, however long
the request took on the way (botocore retries, a paused process). Every change of the flag
(fence, flip, rollback) bumps the epoch, so a write that raced one is cancelled by DynamoDB;
the client then reads the flag again, waits out a fence, and writes again with the builder
called for the table the flag names now (the item's shape may differ per table). After
``max_races`` lost races it raises ``LostRace``, which the application may retry; nothing was
written. A condition of the application's own that fails raises ``WriteRejected``.

The price is the transaction's: DynamoDB charges a transactional write twice the write units of
a plain one, plus the condition check (docs: "Capacity management for transactions").
Checked writes need the flag in the control table (``ControlFlagStore``): SSM has no
conditional write that a DynamoDB transaction could check.

``write(fn)`` / ``writing()`` are the cached form: they honour a fence (waiting while the flag
is fenced, polling every ``poll`` seconds) but cannot stop a write that was already on its way
when the fence began. ``cutover --fenced`` covers them by waiting out the clients' cache TTL
(``--client-ttl``) and a margin; a write slower than that margin can still land on the old
table after the fence. Use the checked writes where that matters.

A fence that outlives ``fenced_until`` (a cutover that crashed) no longer holds writers: they
write to the table the flag still names, which is the old, still-current one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from botocore.exceptions import ClientError

from livemigrate.clock import Clock, SystemClock
from livemigrate.control import ControlStore
from livemigrate.errors import ConfigError
from livemigrate.flag import ControlFlagStore, Flag, FlagStore

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

T = TypeVar("T")

Builder = Callable[[str], Sequence[Mapping[str, Any]]]


class FenceTimeout(Exception):
    """A writer waited longer than its ``max_wait`` for a fenced cutover to finish."""


class LostRace(Exception):
    """The flag changed under every attempt of a checked write; nothing was written. Retryable."""


class WriteRejected(Exception):
    """The application's own condition in a checked write failed; nothing was written.

    ``reasons`` are DynamoDB's cancellation reasons, one per write of the transaction (the
    flag's condition check, always last, is left out).
    """

    def __init__(self, message: str, reasons: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.reasons = reasons


class CheckedFlagStore(FlagStore, Protocol):
    """A flag store whose epoch a DynamoDB transaction can check (the control table)."""

    def condition_check(self, flag: Flag) -> dict[str, Any]: ...


class ActiveTable:
    """Which table to use, read from the flag store with a short cache.

    Parameters
    ----------
    store:
        A flag store (``ControlFlagStore`` or ``SsmFlagStore``; checked writes need the first).
    ttl:
        Seconds a read flag is trusted before it is read again.
    poll:
        Seconds between flag reads while a writer waits out a fence.
    max_wait:
        The longest a writer waits for a fence (beyond it: FenceTimeout).
    clock:
        Injectable time (tests).
    dynamodb:
        The client checked writes are sent with (default: the control table's).
    max_races:
        Attempts of one checked write against a changing flag before ``LostRace``.
    """

    def __init__(
        self,
        store: FlagStore,
        *,
        ttl: float = 1.0,
        poll: float = 0.05,
        max_wait: float = 60.0,
        clock: Clock | None = None,
        dynamodb: DynamoDBClient | None = None,
        max_races: int = 5,
    ) -> None:
        self.store = store
        self.ttl = ttl
        self.poll = poll
        self.max_wait = max_wait
        self.clock: Clock = clock or SystemClock()
        self.dynamodb = dynamodb
        if dynamodb is None and isinstance(store, ControlFlagStore):
            self.dynamodb = store.store.client
        self.max_races = max_races
        self._lock = threading.Lock()
        self._flag: Flag | None = None
        self._read_at = float("-inf")
        self.reads = 0  # flag-store reads, for tests and metrics
        self.races = 0  # checked writes cancelled by a flag change, for tests and metrics

    @classmethod
    def from_control_table(
        cls, dynamodb: DynamoDBClient, control_table: str, migration_id: str, ttl: float = 1.0
    ) -> ActiveTable:
        """The common case: the flag lives in the control table."""
        store = ControlStore(dynamodb, control_table, migration_id)
        return cls(ControlFlagStore(store), ttl=ttl, dynamodb=dynamodb)

    def flag(self, *, fresh: bool = False) -> Flag:
        """The flag, from cache unless it is older than ``ttl`` (or ``fresh``)."""
        now = self.clock.now()
        with self._lock:
            if fresh or self._flag is None or now - self._read_at >= self.ttl:
                self._flag = self.store.read()
                self._read_at = now
                self.reads += 1
            return self._flag

    def active_table(self) -> str:
        """The name of the table applications should use now (at most ``ttl`` stale)."""
        return self.flag().table

    def _unfenced_flag(self, *, fresh: bool = False) -> Flag:
        """The flag once no fence holds writers (waiting, polling, up to ``max_wait``)."""
        flag = self.flag(fresh=fresh)
        started = self.clock.now()
        while flag.is_fenced(self.clock.now()):
            if self.clock.now() - started > self.max_wait:
                raise FenceTimeout(
                    f"waited {self.max_wait:.1f}s for the fenced cutover of {flag.table}"
                )
            self.clock.sleep(self.poll)
            flag = self.flag(fresh=True)
        return flag

    def table_for_write(self) -> str:
        """The table to write to, after waiting out a fenced cutover if one is in progress."""
        return self._unfenced_flag().table

    # -- cached writes ------------------------------------------------------------------------
    def write(self, fn: Callable[[str], T]) -> T:
        """Run ``fn(table)`` against the active table, honouring a fence; returns its result.

        Not checked when it lands (see the module docstring); prefer ``put``/``transact``.
        """
        return fn(self.table_for_write())

    @contextmanager
    def writing(self) -> Iterator[str]:
        """``with active.writing() as table: ...``; the same rules as ``write``."""
        yield self.table_for_write()

    # -- checked writes -----------------------------------------------------------------------
    def transact(self, build: Builder) -> str:
        """Write ``build(table)`` (TransactWriteItems entries, at most 99, ``TableName`` filled
        in where missing) so that it lands only while the flag names ``table``; returns it.

        Raises
        ------
        LostRace
            The flag changed under each of ``max_races`` attempts (retry later).
        WriteRejected
            A condition of the application's own failed.
        FenceTimeout
            A fence held writers longer than ``max_wait``.
        """
        store, client = self._checked_parts()
        fresh = False
        for _ in range(self.max_races):
            flag = self._unfenced_flag(fresh=fresh)
            entries = [_with_table(entry, flag.table) for entry in build(flag.table)]
            try:
                client.transact_write_items(
                    TransactItems=[*entries, store.condition_check(flag)]  # type: ignore[list-item]
                )
            except ClientError as exc:
                if not _flag_moved(exc, len(entries)):
                    raise _rejected(exc, len(entries)) from exc
                self.races += 1
                fresh = True  # the cached flag is stale: read it again before retrying
                continue
            return flag.table
        raise LostRace(
            f"the active-table flag changed under {self.max_races} attempts of one write "
            "(a cutover or rollback is running); nothing was written: retry the write"
        )

    def put(self, item_for: Callable[[str], Mapping[str, Any]], **options: Any) -> str:
        """Checked ``PutItem`` of ``item_for(table)`` (a typed item); ``options`` such as
        ``ConditionExpression`` go into the put. Returns the table written."""
        return self.transact(lambda table: [{"Put": {"Item": dict(item_for(table)), **options}}])

    def delete(self, key_for: Callable[[str], Mapping[str, Any]], **options: Any) -> str:
        """Checked ``DeleteItem`` of ``key_for(table)`` (a typed key)."""
        return self.transact(lambda table: [{"Delete": {"Key": dict(key_for(table)), **options}}])

    def update(self, params_for: Callable[[str], Mapping[str, Any]]) -> str:
        """Checked ``UpdateItem``: ``params_for(table)`` gives ``Key``, ``UpdateExpression`` and
        the rest, as for a transaction's ``Update`` entry."""
        return self.transact(lambda table: [{"Update": dict(params_for(table))}])

    def _checked_parts(self) -> tuple[CheckedFlagStore, DynamoDBClient]:
        store = self.store
        if not hasattr(store, "condition_check") or self.dynamodb is None:
            raise ConfigError(
                "checked writes need the flag in the control table (a DynamoDB transaction "
                "checks its epoch); this flag store cannot be checked",
                "use ControlFlagStore (cutover --flag-store control, the default), or the "
                "cached write()/writing()",
            )
        return store, self.dynamodb  # type: ignore[return-value]


def _with_table(entry: Mapping[str, Any], table: str) -> dict[str, Any]:
    ((kind, body),) = entry.items()
    return {kind: {"TableName": table, **dict(body)}}


def _reasons(exc: ClientError) -> list[dict[str, Any]]:
    return list(exc.response.get("CancellationReasons", []))  # type: ignore[arg-type]


def _flag_moved(exc: ClientError, writes: int) -> bool:
    """The transaction was cancelled because the flag's condition check failed."""
    if exc.response.get("Error", {}).get("Code") != "TransactionCanceledException":
        return False
    reasons = _reasons(exc)
    return len(reasons) > writes and reasons[writes].get("Code") == "ConditionalCheckFailed"


def _rejected(exc: ClientError, writes: int) -> Exception:
    if exc.response.get("Error", {}).get("Code") != "TransactionCanceledException":
        return exc
    reasons = _reasons(exc)[:writes]
    failed = [r.get("Code") for r in reasons if r.get("Code") not in (None, "None")]
    return WriteRejected(f"the write was refused by DynamoDB: {failed}", reasons)
