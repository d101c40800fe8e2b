"""``ShardWork`` behind amazon-kclpy's v3 record processor interface (the optional extra)."""

from __future__ import annotations

from typing import Any

from amazon_kclpy import kcl
from amazon_kclpy.checkpoint_error import CheckpointError
from amazon_kclpy.v3 import processor

from stream_consumer.kcl.processor import ShardWork, log


class Processor(processor.RecordProcessorBase):  # type: ignore[misc]
    """The MultiLangDaemon's view of one shard's ``ShardWork``."""

    def __init__(self, work: ShardWork) -> None:
        self.work = work

    def initialize(self, initialize_input: Any) -> None:
        self.work.shard_id = str(initialize_input.shard_id)
        log.info("shard %s: processor started", self.work.shard_id)

    def process_records(self, process_records_input: Any) -> None:
        checkpointer = process_records_input.checkpointer
        self.work.process(
            process_records_input.records, lambda seq: checkpoint(self.work, checkpointer, seq)
        )

    def lease_lost(self, lease_lost_input: Any) -> None:
        self.work.lease_lost()

    def shard_ended(self, shard_ended_input: Any) -> None:
        # The end of a parent: checkpointing it is what lets the KCL start its children.
        checkpoint(self.work, shard_ended_input.checkpointer, None)
        log.info("shard %s: ended and checkpointed; its children may start", self.work.shard_id)

    def shutdown_requested(self, shutdown_requested_input: Any) -> None:
        # Every batch was checkpointed after its apply: nothing is pending here.
        log.info("shard %s: shutdown requested", self.work.shard_id)


CHECKPOINT_ATTEMPTS = 5


def checkpoint(work: ShardWork, checkpointer: Any, sequence: str | None) -> None:
    """Checkpoint ``sequence`` (None: the shard's end). A ``ShutdownException`` means another
    worker holds the shard now: this processor stops writing. Throttling is retried."""
    for attempt in range(1, CHECKPOINT_ATTEMPTS + 1):
        try:
            if sequence is None:
                checkpointer.checkpoint()
            else:
                checkpointer.checkpoint(sequence)
            return
        except CheckpointError as exc:
            if exc.value == "ShutdownException":
                work.lease_lost()
                return
            if exc.value != "ThrottlingException" or attempt == CHECKPOINT_ATTEMPTS:
                raise
            work.clock.sleep(work.retry.delay(attempt))


def run_processor(work: ShardWork) -> None:
    kcl.KCLProcess(Processor(work)).run()
