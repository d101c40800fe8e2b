"""The active-table flag: which table applications use, with an epoch (ARCHITECTURE.md rule 10).

The flag is ``{active: "source"|"destination", table, epoch, fenced, fenced_until, flipped_at,
frozen_after}``. Every change (fence, unfence, flip, flip back) is ONE conditional write "epoch
is still what I read", and bumps the epoch: two operators racing cannot both win, and a writer
that read an older flag can tell. ``livemigrate.client`` makes that exact: its checked writes
carry a condition on the epoch, so a write lands only on the table the flag names when it lands.

``frozen_after`` (set by every flip) is the moment after which changes to the table the flip
retired are no longer the application's to make: a consumer reading that table's stream counts
them and never applies them (ARCHITECTURE.md rule 13). For a fenced flip it is the fence: no
checked writer can write the old table after the fence, and the consumer drained everything
before it. Without a fence, writers with a cached flag may still write the old table for the
cache TTL, so it is the flip plus that window.

Two stores:

``ControlFlagStore`` (default)
    The ``FLAG`` item of the migration in the control table. The condition is DynamoDB's own
    ``ConditionExpression``, so the guarantee is exact.

``SsmFlagStore``
    An SSM Parameter Store parameter ``/livemigrate/<migration id>/flag`` holding the flag as
    JSON, for applications that already read their configuration from SSM. SSM has no
    conditional put, so a change takes a short lock item (``FLAGLOCK``, one conditional write
    in the control table), re-reads the parameter, checks the epoch, writes, and checks that the
    version SSM returns is exactly one more than the version it read. The guarantee is weaker
    than the control table's: it holds against every writer that goes through livemigrate (all
    take the lock), and a writer outside livemigrate that overwrites the parameter between the
    read and the write is detected afterwards (``FlagConflict``), not prevented.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol

from botocore.exceptions import ClientError

from livemigrate.clock import Clock
from livemigrate.control import ControlStore
from livemigrate.errors import ConflictError
from livemigrate.keys import FLAG, FLAG_LOCK, META
from livemigrate.records import CLOCK_SKEW, STREAM_TIME_PRECISION

if TYPE_CHECKING:
    from mypy_boto3_ssm import SSMClient

Side = Literal["source", "destination"]
# A record made this long before a flag read is certainly covered by it (rounding and skew).
_STALE = STREAM_TIME_PRECISION + CLOCK_SKEW
_TORN_READS = 20


class FlagConflict(ConflictError):
    """The flag changed since it was read (another cutover or rollback won the race)."""


@dataclass(frozen=True)
class Flag:
    """One version of the flag. ``epoch`` 0 is the implicit initial flag (nothing written)."""

    active: Side
    table: str
    epoch: int = 0
    fenced: bool = False
    fenced_until: float = 0.0
    fenced_at: float = 0.0
    flipped_at: float = 0.0
    source_table: str = ""
    destination_table: str = ""
    frozen_after: float = 0.0
    # Set by a cutover before it fences: from then on, consumers mark their deletes on the
    # destination (see livemigrate.replication); cleared by the flip back.
    marks_since: float = 0.0
    # When the destination last became the active table (kept through a rollback): every change
    # of the destination made before it was a forward consumer's, never the application's.
    destination_since: float = 0.0

    def is_fenced(self, now: float) -> bool:
        """Writers must wait: fenced, and the fence has not expired (a crashed cutover)."""
        return self.fenced and now < self.fenced_until

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Flag:
        side = str(data.get("active", "source"))
        return cls(
            active="destination" if side == "destination" else "source",
            table=str(data.get("table", "")),
            epoch=int(data.get("epoch", 0)),
            fenced=bool(data.get("fenced", False)),
            fenced_until=float(data.get("fenced_until", 0) or 0),
            fenced_at=float(data.get("fenced_at", 0) or 0),
            flipped_at=float(data.get("flipped_at", 0) or 0),
            source_table=str(data.get("source_table", "")),
            destination_table=str(data.get("destination_table", "")),
            frozen_after=float(data.get("frozen_after", 0) or 0),
            marks_since=float(data.get("marks_since", 0) or 0),
            destination_since=float(data.get("destination_since", 0) or 0),
        )

    def armed(self, now: float) -> Flag:
        """Consumers are to mark their deletes from now on (a cutover is coming)."""
        return replace(self, marks_since=self.marks_since or now)

    def fence(self, now: float, seconds: float) -> Flag:
        return replace(self, fenced=True, fenced_at=now, fenced_until=now + seconds)

    def unfence(self) -> Flag:
        return replace(self, fenced=False, fenced_until=0.0)

    def flipped(self, side: Side, now: float, frozen_after: float | None = None) -> Flag:
        """The flag after a flip to ``side`` at ``now``; changes to the retired table made
        after ``frozen_after`` (default: the flip itself) are never replicated."""
        to_destination = side == "destination"
        return replace(
            self,
            active=side,
            table=self.destination_table if to_destination else self.source_table,
            fenced=False,
            fenced_until=0.0,
            flipped_at=now,
            frozen_after=now if frozen_after is None else frozen_after,
            marks_since=self.marks_since if to_destination else 0.0,
            destination_since=now if to_destination else self.destination_since,
        )

    def retired(self, side: Side) -> bool:
        """Whether ``side``'s table was retired by a flip (so its new changes are frozen)."""
        return self.flipped_at > 0 and self.active != side


class FlagView:
    """A consumer's view of the flag: read from its store, cached between decisions.

    ``for_records`` answers for records made up to a moment: a cached flag that names no fence
    and no flip is good for records made before it was read; otherwise the flag is read again.
    ``fresh`` gives a flag read no longer ago than asked, with the monotonic time the read was
    sent (a decision taken on it is valid for a bounded time after that).
    """

    def __init__(self, flags: FlagStore, clock: Clock) -> None:
        self.flags = flags
        self.clock = clock
        self._flag: Flag | None = None
        self._read_at = float("-inf")  # wall clock, before the read was sent
        self._read_mono = float("-inf")
        self._lock = threading.Lock()

    def _read(self) -> Flag:
        read_at, read_mono = self.clock.now(), self.clock.monotonic()
        self._flag = self.flags.read()
        self._read_at, self._read_mono = read_at, read_mono
        return self._flag

    def for_records(self, newest_made: float) -> Flag:
        """A flag current for every record made up to ``newest_made``."""
        with self._lock:
            flag = self._flag
            # Only a flag that names no fence, flip or arm can vouch for records made earlier.
            quiet = flag is not None and not (flag.fenced or flag.flipped_at or flag.marks_since)
            if flag is not None and quiet and newest_made + _STALE <= self._read_at:
                return flag
            return self._read()

    def fresh(self, max_age: float) -> tuple[Flag, float]:
        """A flag read at most ``max_age`` seconds ago, and the monotonic time of that read."""
        with self._lock:
            if self._flag is None or self.clock.monotonic() - self._read_mono > max_age:
                self._read()
            assert self._flag is not None
            return self._flag, self._read_mono


class FlagStore(Protocol):
    """Where the flag lives; ``write`` is a compare-and-set on the epoch."""

    def read(self) -> Flag:
        """The current flag (the initial one, epoch 0, if nothing was written yet)."""
        ...

    def write(self, new: Flag, expected_epoch: int) -> Flag:
        """Store ``new`` with epoch ``expected_epoch + 1``; FlagConflict if the epoch moved."""
        ...


def _initial(source_table: str, destination_table: str) -> Flag:
    return Flag(
        active="source",
        table=source_table,
        source_table=source_table,
        destination_table=destination_table,
    )


def _conflict(expected: int, held: Flag) -> FlagConflict:
    return FlagConflict(
        f"the flag changed while this command ran (expected epoch {expected}, now "
        f"{held.epoch}: active={held.active}, fenced={held.fenced})",
        "another cutover or rollback is running or just ran; check `livemigrate status` and "
        "run the command again if it is still needed",
    )


class ControlFlagStore:
    """The flag as the ``FLAG`` item in the control table (exact compare-and-set).

    Parameters
    ----------
    store:
        The migration's control store.
    source_table, destination_table:
        Table names; if empty they are read from the migration's ``META`` item.
    """

    def __init__(self, store: ControlStore, source_table: str = "", destination_table: str = ""):
        self.store = store
        if not (source_table and destination_table):
            meta = store.get(META) or {}
            source_table = source_table or str(meta.get("source_table", ""))
            destination_table = destination_table or str(meta.get("destination_table", ""))
        self.source_table = source_table
        self.destination_table = destination_table

    def read(self) -> Flag:
        for _ in range(_TORN_READS):
            item = self.store.get(FLAG)
            if item is None:
                return _initial(self.source_table, self.destination_table)
            if "table" in item and "epoch" in item:
                return Flag.from_dict(item)
            # moto's server applies an update's attributes one by one, so a concurrent read
            # can see a half-written item (DynamoDB cannot); read again.
            time.sleep(0.005)
        raise FlagConflict(
            f"the flag item in {self.store.table} stays incomplete: {item}",
            "check that nothing but livemigrate writes the FLAG item, then run the command again",
        )

    def condition_check(self, flag: Flag) -> dict[str, Any]:
        """A ``TransactWriteItems`` entry that holds only while the flag is still ``flag``'s
        epoch: a write sent with it lands only on the table that ``flag`` names."""
        condition = "#epoch = :epoch"
        if flag.epoch == 0:
            condition = "attribute_not_exists(#epoch) OR " + condition
        return {
            "ConditionCheck": {
                "TableName": self.store.table,
                "Key": {"pk": {"S": self.store.pk}, "sk": {"S": FLAG}},
                "ConditionExpression": condition,
                "ExpressionAttributeNames": {"#epoch": "epoch"},
                "ExpressionAttributeValues": {":epoch": {"N": str(flag.epoch)}},
            }
        }

    def write(self, new: Flag, expected_epoch: int) -> Flag:
        stored = replace(new, epoch=expected_epoch + 1)
        # Epoch 0 means "no FLAG item yet": the first write must find none.
        condition = "#epoch = :expected"
        if expected_epoch == 0:
            condition = "attribute_not_exists(#epoch) OR " + condition
        values = {k: v for k, v in stored.to_dict().items()}
        if self.store.update(
            FLAG, values, condition=condition, condition_values={"expected": expected_epoch}
        ):
            return stored
        raise _conflict(expected_epoch, self.read())


class SsmFlagStore:
    """The flag as an SSM parameter, changed under a control-table lock (see module docstring).

    Parameters
    ----------
    ssm:
        SSM client (injected).
    lock_store:
        The migration's control store, which holds the ``FLAGLOCK`` item.
    source_table, destination_table:
        Table names for the initial flag.
    lock_seconds:
        How long a lock is held at most (a crashed holder frees it after this).
    """

    def __init__(
        self,
        ssm: SSMClient,
        lock_store: ControlStore,
        source_table: str,
        destination_table: str,
        *,
        lock_seconds: float = 10.0,
    ) -> None:
        self.ssm = ssm
        self.lock_store = lock_store
        self.name = parameter_name(lock_store.migration_id)
        self.source_table = source_table
        self.destination_table = destination_table
        self.lock_seconds = lock_seconds

    def _get(self) -> tuple[Flag, int]:
        try:
            param = self.ssm.get_parameter(Name=self.name)["Parameter"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ParameterNotFound":
                return _initial(self.source_table, self.destination_table), 0
            raise
        return Flag.from_dict(json.loads(param.get("Value", "{}"))), int(param.get("Version", 0))

    def read(self) -> Flag:
        return self._get()[0]

    def write(self, new: Flag, expected_epoch: int) -> Flag:
        me = uuid.uuid4().hex
        self._lock(me)
        try:
            held, version = self._get()
            if held.epoch != expected_epoch:
                raise _conflict(expected_epoch, held)
            stored = replace(new, epoch=expected_epoch + 1)
            written = self.ssm.put_parameter(
                Name=self.name,
                Value=json.dumps(stored.to_dict(), sort_keys=True),
                Type="String",
                Overwrite=True,
            )
            if int(written.get("Version", 0)) != version + 1:
                raise _conflict(expected_epoch, self._get()[0])
            return stored
        finally:
            self.lock_store.update(
                FLAG_LOCK,
                remove=("owner", "expires"),
                condition="#owner = :me",
                condition_values={"me": me},
            )

    def _lock(self, me: str) -> None:
        now = time.time()
        taken = self.lock_store.update(
            FLAG_LOCK,
            {"owner": me, "expires": now + self.lock_seconds},
            condition="attribute_not_exists(#owner) OR #expires < :now",
            condition_values={"now": now},
        )
        if taken is None:
            raise FlagConflict(
                f"another process is changing the SSM flag {self.name} right now",
                "wait a few seconds and run the command again",
            )


def parameter_name(migration_id: str) -> str:
    """The SSM parameter that holds a migration's flag."""
    return f"/livemigrate/{migration_id}/flag"


def open_flag_store(
    kind: str, store: ControlStore, ssm: SSMClient, source_table: str, destination_table: str
) -> FlagStore:
    """The flag store named on the command line: ``control`` (default) or ``ssm``."""
    if kind == "ssm":
        return SsmFlagStore(ssm, store, source_table, destination_table)
    return ControlFlagStore(store, source_table, destination_table)
