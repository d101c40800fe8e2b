"""``livemigrate consume``: apply the source table's stream to the destination, in order.

Usage::

    livemigrate consume                        # run continuously (SIGTERM: checkpoint, release)
    livemigrate consume --until-caught-up      # exit 0 once every shard is read to its end
    livemigrate consume --metrics-port 9108    # Prometheus text at :9108/metrics
    livemigrate consume --lease-seconds 30     # takeover time of a dead consumer's shards
    livemigrate consume --finalize-tombstones  # wait for real deletes, purge tombstones, exit

Everything is checked (stream with NEW_AND_OLD_IMAGES, destination present, transform
importable) before anything is read. Run several processes to share the shards.
"""

from __future__ import annotations

import argparse
import logging
import threading
from dataclasses import dataclass

from livemigrate.aws import AwsClients
from livemigrate.clock import Clock, SystemClock
from livemigrate.config import Settings
from livemigrate.control import ControlStore
from livemigrate.deadletters import DeadLetters, Origin
from livemigrate.migration import Migration, open_migration
from livemigrate.process import stop_on_signals, worker_id
from livemigrate.tables import require_stream
from stream_consumer.applier import DestinationApplier
from stream_consumer.engine import Tuning, run_consumer
from stream_consumer.metrics import Metrics, serve
from stream_consumer.source import BotoShardSource
from stream_consumer.tombstones import (
    NotSwitched,
    finalize_tombstones,
    tombstones_purged,
)

log = logging.getLogger("livemigrate.consumer")

NAME = "source"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_consumer_arguments(parser)
    parser.add_argument(
        "--finalize-tombstones",
        action="store_true",
        help="wait until deletes are real (backfill complete), purge tombstones, exit",
    )
    parser.add_argument(
        "--settle-seconds",
        type=float,
        default=15.0,
        help="finalisation waits this long after the switch to real deletes (default 15)",
    )


def add_consumer_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every stream consumer command shares (``consume``, ``reverse``)."""
    parser.add_argument(
        "--until-caught-up",
        action="store_true",
        help="exit 0 once every open shard is read to its current end (scripts, tests)",
    )
    parser.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    parser.add_argument(
        "--lease-seconds",
        type=float,
        default=30.0,
        help="shard lease length: a dead consumer's shards are taken over after it (default 30)",
    )
    parser.add_argument("--worker-id", help="lease owner name (default host-pid-random)")
    parser.add_argument("--batch-size", type=int, default=1000, help="GetRecords limit")
    parser.add_argument("--poll-interval", type=float, default=0.5, help="idle poll, seconds")
    parser.add_argument("--apply-threads", type=int, default=8, help="parallel writes per batch")


def run(args: argparse.Namespace, settings: Settings, clients: AwsClients) -> int:
    """The ``consume`` command; returns the exit status."""
    migration = open_migration(settings, clients)  # every check before anything is read
    stream_arn = require_stream(migration.source)
    clock = SystemClock()
    if args.finalize_tombstones:
        purged = finalize_tombstones(migration, clock, settle_seconds=args.settle_seconds)
        print(f"tombstones purged: {purged}")
        return 0
    metrics = Metrics(NAME)
    applier = DestinationApplier.for_migration(
        migration,
        metrics,
        consumer=NAME,
        clock=clock,
        threads=args.apply_threads,
        settle_seconds=args.settle_seconds,  # a tombstone lands before the purge (item 10.4)
    )
    stop = threading.Event()
    stop_on_signals(stop)
    if not args.until_caught_up:
        _auto_finalize(migration, args.settle_seconds, stop)
    run = ConsumerRun(migration.store, NAME, migration.dead_letters, "stream", clock, stop)
    return run.drive(args, BotoShardSource(clients.streams, stream_arn), applier, metrics)


@dataclass(frozen=True)
class ConsumerRun:
    """What a consumer command runs the engine with (``consume``, ``reverse``)."""

    store: ControlStore
    name: str
    dead_letters: DeadLetters
    origin: Origin
    clock: Clock
    stop: threading.Event

    def drive(
        self,
        args: argparse.Namespace,
        source: BotoShardSource,
        applier: DestinationApplier,
        metrics: Metrics,
    ) -> int:
        """Run until stopped (or caught up); the exit status. Serves metrics if asked."""
        server = serve(metrics, args.metrics_port) if args.metrics_port else None
        try:
            caught_up = run_consumer(
                source,
                self.store,
                self.name,
                applier,
                worker_id=args.worker_id or worker_id(),
                lease_seconds=args.lease_seconds,
                clock=self.clock,
                dead_letters=self.dead_letters,
                origin=self.origin,
                tuning=Tuning(batch_size=args.batch_size, poll_interval=args.poll_interval),
                metrics=metrics,
                until_caught_up=args.until_caught_up,
                stop_event=self.stop,
            )
        finally:
            applier.close()
            if server is not None:
                server.shutdown()
        if args.until_caught_up and not caught_up:
            return 130
        return 0


def _auto_finalize(migration: Migration, settle: float, stop: threading.Event) -> None:
    """Purge tombstones in the background once this consumer deletes for real (item 10)."""
    if tombstones_purged(migration):
        return

    def work() -> None:
        try:
            finalize_tombstones(
                migration, SystemClock(), settle_seconds=settle, timeout_seconds=1e12, stop=stop
            )
        except NotSwitched:
            return

    threading.Thread(target=work, name="finalize-tombstones", daemon=True).start()
