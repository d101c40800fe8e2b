"""``livemigrate search``: keep the search index equal to the destination table, behind an alias.

Usage::

    livemigrate search sync [--until-caught-up]   # apply D's stream to <alias>-<migration id>
    livemigrate search resync                     # rebuild from a scan of D (alias: see below)
    livemigrate search swap-alias [--index NAME]  # point the alias at the live index (cutover)
    livemigrate search cleanup                    # delete this migration's indices not in use

Options shared by all: ``--index-config FILE`` (JSON ``{"settings": {...}, "mappings":
{...}}`` used when an index is created) and ``--document-hook package.module:function`` (maps a
plain item to its document, or None to leave it out; default: the item, JSON-safe). Settings
used: ``search_url``, ``search_alias``, ``migration_id``, ``destination_table``,
``control_table``.

``resync`` moves the application's alias to the rebuilt index only after the cutover (or when
the alias already points at this migration's index); before it, the rebuilt index becomes the
sink's live index and the cutover points the alias at it. ``--move-alias-before-cutover`` moves
it anyway: the application then reads the new schema's documents while it still writes the
source table.

``sync`` runs the shared consumer engine (leases, shard lineage, checkpoints) on the
destination's stream under the consumer name ``search``, with the options and exit codes of
``livemigrate consume`` (``stream_consumer.cli``: ``--until-caught-up``, ``--lease-seconds``,
``--worker-id``, ``--batch-size``, ``--poll-interval``, ``--metrics-port``): run several
processes to share the shards; SIGTERM checkpoints and releases the leases; a killed process's
shards are taken over after ``--lease-seconds``. With ``--until-caught-up`` it exits 130 when
stopped by a signal first and 4 when it stopped otherwise before catching up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import threading
from dataclasses import asdict, dataclass
from typing import Any

from livemigrate.argtypes import positive_int
from livemigrate.aws import AwsClients
from livemigrate.clock import SystemClock
from livemigrate.config import Settings
from livemigrate.control import ControlStore
from livemigrate.deadletters import DeadLetters
from livemigrate.errors import ConfigError, SearchUnavailable, ServiceUnreachable
from livemigrate.exitcodes import ExitCode
from livemigrate.failures import short
from livemigrate.flag import open_flag_store
from livemigrate.process import stop_on_signals
from livemigrate.retention import DYNAMODB_STREAMS_RETENTION, duration
from livemigrate.search.backend import ClientBackend
from livemigrate.search.batcher import BatchPolicy
from livemigrate.search.documents import load_hook
from livemigrate.search.indices import IndexConfig, live_index, load_index_config
from livemigrate.search.resync import Resync, TableSource, cleanup, swap_to_live
from livemigrate.search.sink import Indexing, SearchSink, SinkStats, retention_warning
from livemigrate.search.targets import ControlTargets
from livemigrate.tables import TableInfo, describe, require_stream
from stream_consumer.cli import ConsumerRun, add_stream_arguments
from stream_consumer.metrics import Metrics
from stream_consumer.source import BotoShardSource

log = logging.getLogger("livemigrate.search")

CONSUMER = "search"

DESCRIPTION = (
    "Keep a search index equal to the destination table behind the application's alias: "
    "`sync` applies the destination's stream (options and exit codes as `livemigrate "
    "consume`), `resync` rebuilds the index from a scan, `swap-alias` points the alias at the "
    "live index, `cleanup` deletes this migration's unused indices."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="search_command", required=True, metavar="SUBCOMMAND")
    sync = _subcommand(sub, "sync", "apply the destination's stream to the index (continuous)")
    add_stream_arguments(sync)  # the consumer engine's options, as `consume` has them
    resync = _subcommand(
        sub,
        "resync",
        "rebuild a fresh index from a scan of the destination (the alias moves only after the "
        "cutover)",
    )
    resync.add_argument(
        "--move-alias-before-cutover",
        action="store_true",
        help="also point the application's alias at the rebuilt index before the cutover: the "
        "application then reads new-schema documents while it still writes the source",
    )
    resync.add_argument(
        "--flag-store",
        choices=("control", "ssm"),
        default="control",
        help="where the cutover flag lives, to tell whether the cutover happened "
        "(default: control)",
    )
    swap = _subcommand(sub, "swap-alias", "point the alias at the live index (one request)")
    swap.add_argument("--index", help="the index to point at (default: the sink's live index)")
    clean = _subcommand(sub, "cleanup", "delete this migration's indices the alias does not use")
    for cmd in (sync, resync, swap, clean):
        cmd.add_argument(
            "--json",
            action="store_true",
            help="print the result as JSON on stdout (text on stderr)",
        )
    for cmd in (sync, resync):
        cmd.add_argument(
            "--index-config", help='JSON file {"settings": {}, "mappings": {}} for a new index'
        )
        cmd.add_argument(
            "--document-hook", help="package.module:function mapping an item to its document"
        )
        cmd.add_argument(
            "--bulk-docs",
            type=positive_int,
            default=500,
            help="documents per bulk request (default: 500)",
        )
        cmd.add_argument(
            "--bulk-bytes",
            type=positive_int,
            default=5 * 1024 * 1024,
            help="bytes per bulk request (default: 5 MiB)",
        )


def _subcommand(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help_text, description=help_text[:1].upper() + help_text[1:] + "."
    )
    return parser


@dataclass(frozen=True)
class Context:
    settings: Settings
    clients: AwsClients
    alias: str
    store: ControlStore
    backend: ClientBackend
    targets: ControlTargets
    config: IndexConfig
    policy: BatchPolicy


def run(args: argparse.Namespace, settings: Settings, clients: AwsClients) -> int:
    """The ``search`` command; returns the exit status. With ``--json`` the result is one JSON
    object on stdout and the text goes to stderr."""
    result: dict[str, Any] = {"command": args.search_command}
    if not getattr(args, "json", False):
        return _run(args, settings, clients, result)
    with contextlib.redirect_stdout(sys.stderr):
        code = _run(args, settings, clients, result)
    print(json.dumps({**result, "code": int(code)}, sort_keys=True))
    return code


def _run(
    args: argparse.Namespace, settings: Settings, clients: AwsClients, result: dict[str, Any]
) -> int:
    ctx = _context(args, settings, clients)
    command = args.search_command
    if command == "sync":
        return _sync(args, ctx, result)
    if command == "resync":
        return _resync(args, ctx, result)
    if command == "swap-alias":
        index, previous = swap_to_live(ctx.backend, ctx.targets, ctx.alias, args.index)
        result.update(alias=ctx.alias, index=index, previous=list(previous))
        print(f"alias {ctx.alias} -> {index} (was: {', '.join(previous) or 'nothing'})")
        return ExitCode.OK
    deleted = cleanup(ctx.backend, ctx.alias, settings.migration_id, ctx.targets.current().indices)
    result.update(deleted=list(deleted))
    print(f"deleted indices: {', '.join(deleted) or 'none'}")
    return ExitCode.OK


def _context(args: argparse.Namespace, settings: Settings, clients: AwsClients) -> Context:
    if not settings.search_url or not settings.search_alias:
        missing = [n for n in ("search_url", "search_alias") if not getattr(settings, n)]
        raise ConfigError(
            f"livemigrate search needs {' and '.join(missing)}",
            "set LIVEMIGRATE_SEARCH_URL (e.g. http://127.0.0.1:9299) and LIVEMIGRATE_SEARCH_ALIAS "
            "(the alias the application reads, e.g. 'orders') or put them in livemigrate.toml",
        )
    from livemigrate.search.clients import open_backend

    try:
        backend = open_backend(settings)
    except SearchUnavailable as exc:
        raise ServiceUnreachable(
            f"the search node ({settings.search_engine}) at {settings.search_url} did not "
            f"answer: {short(exc)}",
            "check that the node is up and reachable, or fix LIVEMIGRATE_SEARCH_URL",
        ) from exc
    store = ControlStore(clients.dynamodb, settings.control_table, settings.migration_id)
    store.ensure_table()
    return Context(
        settings=settings,
        clients=clients,
        alias=settings.search_alias,
        store=store,
        backend=backend,
        targets=ControlTargets(store, live_index(settings.search_alias, settings.migration_id)),
        config=load_index_config(
            getattr(args, "index_config", None) or settings.search_index_config
        ),
        policy=BatchPolicy(
            max_count=getattr(args, "bulk_docs", 500),
            max_bytes=getattr(args, "bulk_bytes", 5 * 1024 * 1024),
        ),
    )


def _destination(ctx: Context) -> TableInfo:
    return describe(ctx.clients.dynamodb, ctx.settings.destination_table, "destination")


def _sink(args: argparse.Namespace, ctx: Context, on_idle: Any = None) -> SearchSink:
    return SearchSink(
        ctx.backend,
        ctx.targets,
        DeadLetters(ctx.store),
        _indexing(args, ctx),
        on_idle=on_idle,
    )


def _indexing(args: argparse.Namespace, ctx: Context) -> Indexing:
    """``--document-hook`` (or the setting) and ``--bulk-docs`` / ``--bulk-bytes``."""
    hook = load_hook(args.document_hook or ctx.settings.search_document_hook)
    return Indexing(hook=hook, policy=ctx.policy)


def _sync(args: argparse.Namespace, ctx: Context, result: dict[str, Any]) -> int:
    stream_arn = require_stream(_destination(ctx))
    ctx.backend.create_index(
        ctx.targets.current().indices[0], ctx.config.settings, ctx.config.mappings
    )
    metrics = Metrics(CONSUMER)
    sink = _sink(args, ctx, on_idle=lambda: _retention_watch(metrics))
    stop = threading.Event()
    stop_on_signals(stop)
    run = ConsumerRun(
        ctx.store,
        CONSUMER,
        DeadLetters(ctx.store),
        "search",
        SystemClock(),
        stop,
        metrics_address=ctx.settings.metrics_address,
    )
    try:
        caught_up = run.consume(
            args, BotoShardSource(ctx.clients.streams, stream_arn), sink, metrics
        )
    finally:
        sink.close()
    result.update(caught_up=caught_up, **asdict(sink.stats))
    print(f"search sync stopped ({'caught up' if caught_up else 'stopped'}): {_stats(sink.stats)}")
    return run.exit_code(args, caught_up)


def _stats(stats: SinkStats) -> str:
    return (
        f"indexed {stats.indexed}, deleted {stats.deleted}, tombstones {stats.tombstoned}, "
        f"stale skipped {stats.stale}, dead-lettered {stats.dead_lettered}, retried "
        f"{stats.retried}, lag {stats.lag_seconds:.1f}s"
    )


def _retention_watch(metrics: Any) -> None:
    """The retention guard for the index: trimmed reads or a lag near the retention -> resync."""
    if metrics.value("trimmed_total") > 0:
        log.error(
            "SEARCH SINK MET TRIMMED STREAM DATA: changes older than the destination stream's "
            f"{duration(DYNAMODB_STREAMS_RETENTION.seconds)} retention were never applied, so "
            "the index may be missing changes. Run "
            "`livemigrate search resync` now to rebuild it from a scan of the destination table."
        )
    lag = float(metrics.value("lag_seconds"))
    if DYNAMODB_STREAMS_RETENTION.level(lag) == "error":
        log.error("%s", retention_warning(lag))


def _resync(args: argparse.Namespace, ctx: Context, result: dict[str, Any]) -> int:
    dest = _destination(ctx)
    resync = Resync(
        ctx.backend,
        ctx.targets,
        DeadLetters(ctx.store),
        _indexing(args, ctx),
        alias=ctx.alias,
        migration_id=ctx.settings.migration_id,
        config=ctx.config,
    )
    cut_over = _cut_over(args, ctx)
    move = True if (cut_over or args.move_alias_before_cutover) else None
    report = resync.run(
        TableSource(ctx.clients.dynamodb, dest.name, dest.key_names), move_alias=move
    )
    result.update({k: list(v) if isinstance(v, tuple) else v for k, v in asdict(report).items()})
    print(
        f"resync: built {report.index}; scanned {report.scanned}, created {report.created}, "
        f"superseded by live writes {report.superseded}, skipped {report.skipped}, "
        f"dead-lettered {report.dead_lettered}, tombstones purged {report.tombstones_purged}"
    )
    behind = ", ".join(report.alias_indices) or "nothing"
    if report.alias_moved:
        print(f"  alias {ctx.alias} -> {report.index}")
    else:
        print(
            f"  alias {ctx.alias} left on {behind}: the cutover has not happened, so the "
            f"application keeps reading it; the cutover points it at {report.index} "
            "(--move-alias-before-cutover moves it now)"
        )
    print(
        f"  previous index kept: {', '.join(report.previous) or '-'} "
        "(delete with `livemigrate search cleanup`)"
    )
    return ExitCode.OK if not report.dead_lettered else ExitCode.NOT_MIGRATED


def _cut_over(args: argparse.Namespace, ctx: Context) -> bool:
    """Whether the flag names the destination (the application reads new-schema documents)."""
    settings = ctx.settings
    flags = open_flag_store(
        args.flag_store,
        ctx.store,
        ctx.clients.ssm,
        settings.source_table,
        settings.destination_table,
    )
    return flags.read().active == "destination"
