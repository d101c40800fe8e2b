"""``livemigrate consume``: apply the source table's stream to the destination, in order.

Usage::

    livemigrate consume                        # run continuously (SIGTERM: checkpoint, release)
    livemigrate consume --until-caught-up      # exit 0 once every shard is read to its end
    livemigrate consume --metrics-port 9108    # Prometheus text at 127.0.0.1:9108/metrics
    livemigrate consume --lease-seconds 30     # takeover time of a dead consumer's shards
    livemigrate consume --finalize-tombstones  # wait for real deletes, purge tombstones, exit
    livemigrate consume --engine kcl           # Kinesis source: the KCL (stream_consumer/kcl)

Everything is checked (stream with NEW_AND_OLD_IMAGES, destination present, transform
importable) before anything is read. Run several processes to share the shards. With
``change_source = "kinesis"`` the Kinesis data stream ``kinesis_stream`` is read instead
(``stream_consumer.kinesis``): deletes stay tombstones, purged below the watermark.

Exit codes (``livemigrate.exitcodes``): 0 when a continuous consumer is stopped by SIGTERM /
Ctrl-C (checkpoints saved, leases released: that is how it ends) or ``--until-caught-up``
caught up; with ``--until-caught-up``, 130 when stopped by a signal first and 4 when it stopped
otherwise before catching up; 2 bad input (a metrics port in use, ...); 6 a service did not
answer for too long.
"""

from __future__ import annotations

import argparse
import errno
import logging
import threading
from dataclasses import dataclass
from typing import Protocol
from wsgiref.simple_server import WSGIServer

from livemigrate.argtypes import non_negative_float, positive_float, positive_int
from livemigrate.aws import AwsClients
from livemigrate.clock import Clock, SystemClock
from livemigrate.config import DEFAULT_METRICS_ADDRESS, Settings
from livemigrate.control import ControlStore
from livemigrate.deadletters import DeadLetters, Origin
from livemigrate.errors import ConfigError, PreflightError
from livemigrate.exitcodes import ExitCode
from livemigrate.migration import Migration, open_migration
from livemigrate.process import stop_on_signals, worker_id
from livemigrate.records import RecordSink
from livemigrate.retention import DYNAMODB_STREAMS_RETENTION, Retention, source_retention
from livemigrate.retention import record as record_retention
from livemigrate.tables import require_stream
from stream_consumer.applier import DestinationApplier
from stream_consumer.engine import ConsumerOptions, Tuning, run_consumer
from stream_consumer.kcl import daemon as kcl_daemon
from stream_consumer.kinesis.source import stream_ref
from stream_consumer.metrics import Metrics, serve
from stream_consumer.source import BotoShardSource, ShardSource
from stream_consumer.tombstones import (
    FinalizeOptions,
    NotSwitched,
    finalize_tombstones,
    sweep,
    tombstones_purged,
)

log = logging.getLogger("livemigrate.consumer")

NAME = "source"

DESCRIPTION = (
    "Apply the source table's stream to the destination, in order per item, through the "
    "transform; run it before the backfill and keep it running through the cutover. Run "
    "several processes to share the shards. Exit codes: 0 stopped by SIGTERM / Ctrl-C (a "
    "continuous consumer) or caught up (--until-caught-up); with --until-caught-up 130 when "
    "stopped by a signal first and 4 when it stopped otherwise; 2 bad input; 6 a service did "
    "not answer for too long."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_consumer_arguments(parser, metrics_default="the `metrics_port` setting")
    kcl_daemon.add_arguments(parser)  # --engine kcl, --kcl-property
    parser.add_argument(
        "--finalize-tombstones",
        action="store_true",
        help="wait until deletes are real (backfill complete), purge tombstones, exit",
    )
    parser.add_argument(
        "--settle-seconds",
        type=non_negative_float,
        default=15.0,
        help="finalisation waits this long after the switch to real deletes (default 15)",
    )


def add_consumer_arguments(parser: argparse.ArgumentParser, metrics_default: str = "none") -> None:
    """The options of the commands that apply a stream to a table (``consume``, ``reverse``)."""
    add_stream_arguments(parser, metrics_default)
    parser.add_argument(
        "--apply-threads",
        type=positive_int,
        default=8,
        help="parallel writes per batch (default: 8)",
    )


def add_stream_arguments(parser: argparse.ArgumentParser, metrics_default: str = "none") -> None:
    """The options every command that runs the consumer engine shares (``consume``,
    ``reverse``, ``search sync``): ``ConsumerRun`` reads them."""
    parser.add_argument(
        "--until-caught-up",
        action="store_true",
        help="exit 0 once every open shard is read to its current end (scripts, tests)",
    )
    parser.add_argument(
        "--metrics-port",
        type=positive_int,
        help=f"serve Prometheus metrics on this port (default: {metrics_default})",
    )
    parser.add_argument(
        "--lease-seconds",
        type=positive_float,
        default=30.0,
        help="shard lease length: a dead consumer's shards are taken over after it (default 30)",
    )
    parser.add_argument("--worker-id", help="lease owner name (default: host-pid-random)")
    parser.add_argument(
        "--batch-size", type=positive_int, default=1000, help="GetRecords limit (default: 1000)"
    )
    parser.add_argument(
        "--poll-interval",
        type=positive_float,
        default=0.5,
        help="idle poll, seconds (default: 0.5)",
    )


def run(args: argparse.Namespace, settings: Settings, clients: AwsClients) -> int:
    """The ``consume`` command; returns the exit status."""
    if args.engine == "kcl" and not args.finalize_tombstones:
        return kcl_daemon.run_kcl(args, settings, clients)
    migration = open_migration(settings, clients)  # every check before anything is read
    source = change_source(migration)
    if args.metrics_port is None:
        args.metrics_port = settings.metrics_port
    _warn_without_destination_stream(migration)
    clock = SystemClock()
    if args.finalize_tombstones:
        options = FinalizeOptions(settle_seconds=args.settle_seconds)
        purged = finalize_tombstones(migration, clock, options)
        print(f"tombstones purged: {purged}")
        return ExitCode.OK
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
    retention = source_retention(settings, clients)
    record_retention(migration.store, retention)  # what status and the gates show
    run = ConsumerRun(
        migration.store,
        NAME,
        migration.dead_letters,
        "stream",
        clock,
        stop,
        retention,
        metrics_address=settings.metrics_address,
    )
    return run.drive(args, source, applier, metrics)


def change_source(migration: Migration) -> ShardSource:
    """The shards the source consumer reads: the table's DynamoDB stream, or the Kinesis data
    stream of its Kinesis streaming destination (``change_source``, issue 14)."""
    settings = migration.settings
    if settings.change_source != "kinesis":
        return BotoShardSource(migration.clients.streams, require_stream(migration.source))
    from stream_consumer.kinesis.source import KinesisShardSource

    assert settings.kinesis_stream is not None  # the settings refuse kinesis without one
    kinesis = migration.clients.kinesis
    if kinesis is None:
        raise ConfigError("no Kinesis client was built", "build the clients with make_clients")
    try:
        kinesis.describe_stream_summary(**stream_ref(settings.kinesis_stream))
    except kinesis.exceptions.ResourceNotFoundException as exc:
        raise PreflightError(
            f"the Kinesis data stream {settings.kinesis_stream!r} does not exist",
            "name the stream of the source table's Kinesis streaming destination in "
            "LIVEMIGRATE_KINESIS_STREAM (name or ARN), or enable the destination first",
        ) from exc
    return KinesisShardSource(kinesis, settings.kinesis_stream)


class ClosingSink(RecordSink, Protocol):
    """A sink with threads or buffers to release once the engine stops."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class ConsumerRun:
    """What a consumer command runs the engine with (``consume``, ``reverse``, ``search sync``)."""

    store: ControlStore
    name: str
    dead_letters: DeadLetters
    origin: Origin
    clock: Clock
    stop: threading.Event
    # The stream's retention: the lag thresholds (rule 9, livemigrate.retention).
    retention: Retention = DYNAMODB_STREAMS_RETENTION
    # Where ``--metrics-port`` listens (the ``metrics_address`` setting): this host only unless
    # the operator opens it to the network.
    metrics_address: str = DEFAULT_METRICS_ADDRESS

    def drive(
        self,
        args: argparse.Namespace,
        source: ShardSource,
        sink: ClosingSink,
        metrics: Metrics,
    ) -> int:
        """Run until stopped (or caught up); the exit status. Closes the sink."""
        try:
            caught_up = self.consume(args, source, sink, metrics)
        finally:
            sink.close()
        return self.exit_code(args, caught_up)

    def consume(
        self, args: argparse.Namespace, source: ShardSource, sink: RecordSink, metrics: Metrics
    ) -> bool:
        """Run the engine with the options ``add_stream_arguments`` declared; True when it
        caught up. Serves metrics while it runs if ``--metrics-port`` is set."""
        port = args.metrics_port
        server = _serve(metrics, self.metrics_address, port) if port else None
        options = ConsumerOptions(
            store=self.store,
            name=self.name,
            worker_id=args.worker_id or worker_id(),
            lease_seconds=args.lease_seconds,
            clock=self.clock,
            dead_letters=self.dead_letters,
            origin=self.origin,
            tuning=Tuning(
                batch_size=args.batch_size,
                poll_interval=args.poll_interval,
                retention=self.retention,
            ),
        )
        try:
            return run_consumer(
                source,
                sink,
                options,
                metrics=metrics,
                until_caught_up=args.until_caught_up,
                stop_event=self.stop,
            )
        finally:
            if server is not None:
                server.shutdown()
                server.server_close()

    def exit_code(self, args: argparse.Namespace, caught_up: bool) -> ExitCode:
        """OK, or with ``--until-caught-up`` INTERRUPTED (a signal) / INCOMPLETE (else)."""
        if not args.until_caught_up or caught_up:
            return ExitCode.OK  # a continuous consumer has no end: a stop by signal is success
        if self.stop.is_set():
            return ExitCode.INTERRUPTED
        return ExitCode.INCOMPLETE


def _serve(metrics: Metrics, address: str, port: int) -> WSGIServer:
    """The metrics server; an address it cannot bind is the operator's to fix, not a crash."""
    try:
        return serve(metrics, port, host=address)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"metrics port {port} is already in use",
                "choose another --metrics-port (or LIVEMIGRATE_METRICS_PORT), or stop the "
                "process that listens on it",
            ) from exc
        raise ConfigError(
            f"cannot serve metrics on {address}:{port} ({exc.strerror or exc})",
            "set LIVEMIGRATE_METRICS_ADDRESS (metrics_address) to an address of this host: "
            "127.0.0.1 (this host only, the default) or 0.0.0.0 (every interface)",
        ) from exc


def _warn_without_destination_stream(migration: Migration) -> None:
    """The search sink and the reverse consumer read D's stream: say so if it has none."""
    settings = migration.settings
    readers = []
    if settings.search_url and settings.search_alias:
        readers.append("the search sink (`livemigrate search sync`)")
    if settings.inverse_transform:
        readers.append("the reverse consumer (`livemigrate reverse`)")
    if readers and not migration.destination.stream_arn:
        log.warning(
            "the destination table %s has no stream, but %s reads it: enable a "
            "NEW_AND_OLD_IMAGES stream on %s",
            migration.destination.name,
            " and ".join(readers),
            migration.destination.name,
        )


def _auto_finalize(migration: Migration, settle: float, stop: threading.Event) -> None:
    """Purge tombstones in the background once this consumer deletes for real (item 10)."""
    kinesis = migration.settings.change_source == "kinesis"
    if tombstones_purged(migration) and not kinesis:
        return

    def work() -> None:
        try:
            if not tombstones_purged(migration):
                options = FinalizeOptions(settle_seconds=settle, timeout_seconds=1e12)
                finalize_tombstones(migration, SystemClock(), options, stop)
        except NotSwitched:
            return
        if kinesis:  # deletes keep leaving tombstones: purge below the watermark from now on
            sweep(migration, interval=max(1.0, min(30.0, settle)), stop=stop)

    threading.Thread(target=work, name="finalize-tombstones", daemon=True).start()
