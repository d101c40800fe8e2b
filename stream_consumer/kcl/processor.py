"""The record processor the KCL's MultiLangDaemon runs, one process per shard.

``python -m stream_consumer.kcl.processor`` is started by the daemon (``daemon.py`` writes the
command into the properties). It reads the migration's settings from the environment, like
every command, and applies each batch with the built-in consumer's applier:

1. each record's data is parsed (``stream_consumer.kinesis.records``); a record that is not a
   DynamoDB change goes to the dead letters;
2. the batch is applied in order; a failing record is retried with backoff and dead-lettered
   after ``max_attempts`` (at once when retrying cannot help), an outage is ridden out;
3. only then is the batch checkpointed (rule 4: checkpoint after apply);
4. at a shard's end the end is checkpointed, which lets the KCL start the children;
5. after ``lease_lost`` nothing more is written or checkpointed: another worker holds the shard
   and replays from the last checkpoint (versions make the replay harmless).

The protocol uses stdout: nothing here prints; logs go to stderr (the daemon relays them).
A fatal configuration error (a stream with millisecond precision) is written to the file
``LIVEMIGRATE_KCL_FATAL`` names and the daemon is asked to stop, so ``consume --engine kcl``
reports it with its exit code.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from livemigrate.backoff import Backoff
from livemigrate.clock import Clock, SystemClock
from livemigrate.errors import LivemigrateError
from livemigrate.records import ApplyFailure, RecordSink, StreamRecord

log = logging.getLogger("livemigrate.kcl")

FATAL_ENV = "LIVEMIGRATE_KCL_FATAL"


class KclRecord(Protocol):
    """What the processor reads of an ``amazon_kclpy.messages.Record``."""

    @property
    def binary_data(self) -> bytes: ...

    @property
    def sequence_number(self) -> str: ...


class Parse(Protocol):
    def __call__(self, data: bytes, *, sequence_number: str, shard_id: str) -> StreamRecord: ...


class DeadLetterSink(Protocol):
    def add(self, origin: Any, reason: str, raw: Any, key: Any) -> str: ...


class LeaseLostError(Exception):
    """The KCL took the shard's lease away: this processor must not write any more."""


@dataclass(frozen=True)
class Retry:
    """Attempts of one record before it is dead-lettered, and the backoff between them."""

    max_attempts: int = 5
    base: float = 0.1
    cap: float = 5.0

    def delay(self, attempt: int) -> float:
        return Backoff(self.base, self.cap, jitter=False).delay(attempt)


@dataclass
class ShardWork:
    """One shard's records: parse, apply, dead-letter, checkpoint (independent of the KCL).

    Parameters
    ----------
    sink:
        The applier (``DestinationApplier``), as the built-in consumer uses it.
    parse:
        Kinesis record data -> ``StreamRecord``; raises ``ValueError`` for data that is not a
        change record (dead-lettered) and ``LivemigrateError`` for a fatal refusal.
    dead_letters:
        Where records that cannot be applied go (origin ``stream``).
    """

    sink: RecordSink
    parse: Parse
    dead_letters: DeadLetterSink
    shard_id: str = ""
    retry: Retry = field(default_factory=Retry)
    clock: Clock = field(default_factory=SystemClock)
    lost: bool = False
    applied: int = 0

    def process(self, records: Sequence[KclRecord], checkpoint: Callable[[str], None]) -> None:
        """Apply ``records`` in order, then checkpoint the last one."""
        if self.lost:
            raise LeaseLostError(f"{self.shard_id}: the lease was lost; nothing is written")
        parsed = [change for record in records if (change := self._parse(record)) is not None]
        self._apply(parsed)
        if records and not self.lost:
            checkpoint(records[-1].sequence_number)

    def lease_lost(self) -> None:
        self.lost = True
        log.warning("%s: lease lost; this processor writes nothing more", self.shard_id)

    def _parse(self, record: KclRecord) -> StreamRecord | None:
        try:
            return self.parse(
                record.binary_data, sequence_number=record.sequence_number, shard_id=self.shard_id
            )
        except LivemigrateError:
            raise
        except ValueError as exc:
            raw = record.binary_data.decode("utf-8", "replace")
            reason = f"not a DynamoDB change record: {exc} (shard {self.shard_id})"
            self.dead_letters.add("stream", reason, raw, {})
            log.error("record %s dead-lettered: %s", record.sequence_number, reason)
            return None

    def _apply(self, pending: list[StreamRecord]) -> None:
        attempts = 0
        while pending:
            try:
                self.sink.apply(pending)
            except ApplyFailure as failure:
                self.applied += failure.index
                pending, attempts = self._after(pending, failure, attempts)
                continue
            self.applied += len(pending)
            return

    def _after(
        self, pending: list[StreamRecord], failure: ApplyFailure, attempts: int
    ) -> tuple[list[StreamRecord], int]:
        """What is left to apply after ``failure``, and the attempts of its first record."""
        if failure.index > 0:
            pending, attempts = pending[failure.index :], 0
        if failure.transient:  # an outage, not the record's fault: ride it out
            self.clock.sleep(self.retry.delay(self.retry.max_attempts))
            return pending, attempts
        attempts += 1
        if not failure.retryable or attempts >= self.retry.max_attempts:
            self._dead_letter(pending[0], failure.reason, attempts)
            return pending[1:], 0
        log.warning("apply failed (attempt %d): %s", attempts, failure.reason)
        self.clock.sleep(self.retry.delay(attempts))
        return pending, attempts

    def _dead_letter(self, record: StreamRecord, reason: str, tries: int) -> None:
        from stream_consumer.engine import json_safe_record

        self.dead_letters.add(
            "stream",
            f"{reason} (after {tries} attempt(s), shard {self.shard_id})",
            json_safe_record(record),
            record.keys,
        )
        log.error("record %s dead-lettered: %s", record.sequence_number, reason)


def report_fatal(exc: LivemigrateError) -> None:
    """Leave the reason where the launcher reads it, and ask the daemon to stop."""
    text = str(exc) + (f"\n  fix: {exc.fix}" if getattr(exc, "fix", "") else "")
    path = os.environ.get(FATAL_ENV)
    if path:
        with open(path, "w", encoding="utf-8") as out:
            out.write(text)
    log.error("%s", text)
    os.kill(os.getppid(), signal.SIGTERM)


def _build() -> tuple[ShardWork, Callable[[], None]]:
    """The shard work for the configured migration (settings from the environment)."""
    from livemigrate.aws import make_clients
    from livemigrate.config import load_settings
    from livemigrate.migration import open_migration
    from stream_consumer.applier import DestinationApplier
    from stream_consumer.kinesis.records import parse_kinesis_record
    from stream_consumer.metrics import Metrics

    settings = load_settings()
    migration = open_migration(settings, make_clients(settings))
    applier = DestinationApplier.for_migration(migration, Metrics("source"), consumer="source")
    work = ShardWork(applier, parse_kinesis_record, migration.dead_letters)
    return work, applier.close


def main() -> None:
    """Run one shard's processor under the MultiLangDaemon (stdin/stdout protocol)."""
    logging.basicConfig(
        stream=sys.stderr, level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    log.setLevel(logging.INFO)  # shard starts and ends
    from stream_consumer.kcl.adapter import run_processor

    try:
        work, close = _build()
    except LivemigrateError as exc:
        report_fatal(exc)
        raise SystemExit(2) from exc
    try:
        run_processor(work)
    except LivemigrateError as exc:
        report_fatal(exc)
        raise SystemExit(2) from exc
    finally:
        close()


if __name__ == "__main__":
    main()
