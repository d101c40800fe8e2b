"""``livemigrate reverse``: the command's arguments, and the wiring of ``stream_consumer.reverse``.

Usage::

    livemigrate reverse --inverse-transform pkg.mod:fn   # or LIVEMIGRATE_INVERSE_TRANSFORM
    livemigrate reverse --until-caught-up                # exit 0 once every shard is read

Exit codes as ``consume`` (``stream_consumer.cli``).
"""

from __future__ import annotations

import argparse
import logging
import threading

from livemigrate.aws import AwsClients
from livemigrate.clock import SystemClock
from livemigrate.config import Settings
from livemigrate.process import stop_on_signals
from livemigrate.retention import DYNAMODB_STREAMS_RETENTION
from stream_consumer.cli import ConsumerRun, add_consumer_arguments
from stream_consumer.metrics import Metrics
from stream_consumer.reverse import NAME, build_applier, inverse_spec, open_reverse
from stream_consumer.source import BotoShardSource

log = logging.getLogger("livemigrate.reverse")

DESCRIPTION = (
    "After the cutover, apply the destination's stream back to the source through the inverse "
    "transform, so that a rollback loses nothing. Start it before the cutover. Exit codes as "
    "`livemigrate consume`."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--inverse-transform",
        help="pkg.mod:fn mapping a destination item back to source items "
        "(default: LIVEMIGRATE_INVERSE_TRANSFORM)",
    )
    parser.add_argument(
        "--round-trip-sample",
        type=int,
        default=25,
        help="source items checked for inverse(transform(item)) == item at start (0: skip)",
    )
    add_consumer_arguments(parser)


def run(args: argparse.Namespace, settings: Settings, clients: AwsClients) -> int:
    """The ``reverse`` command; returns the exit status."""
    spec = inverse_spec(settings, args.inverse_transform)
    setup = open_reverse(settings, clients, spec, sample=args.round_trip_sample)
    clock = SystemClock()
    metrics = Metrics(NAME)
    store = setup.migration.store
    applier = build_applier(setup, clients, clock, metrics, args.apply_threads)
    stop = threading.Event()
    stop_on_signals(stop)
    log.info(
        "reverse consumer: %s stream -> %s via %s",
        setup.migration.destination.name,
        setup.migration.source.name,
        spec,
    )
    # The destination's DynamoDB stream keeps 24 h: the reverse consumer's lag window.
    run = ConsumerRun(
        store,
        NAME,
        setup.migration.dead_letters,
        "reverse",
        clock,
        stop,
        DYNAMODB_STREAMS_RETENTION,
        metrics_address=settings.metrics_address,
    )
    return run.drive(args, BotoShardSource(clients.streams, setup.stream_arn), applier, metrics)
