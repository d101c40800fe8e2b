"""``livemigrate demo``: a real migration, end to end, on the local services.

It plays both sides: the application (a source table with a hot outbox partition and a live
write load) and the operator (the same ``livemigrate`` commands a team would run, as separate
processes): start the consumer and the search sink, run the backfill while the load writes,
wait for tombstones to be purged, verify, cut over with writers fenced, print a summary.

With ``--source kinesis`` the consumer reads a Kinesis data stream instead of the table's
DynamoDB stream: the bridge (``stream_consumer.kinesis.bridge``, moto has no Kinesis streaming
destination) copies the table's stream into it on a thread of the demo, putting some records
twice and shuffling them within small windows, as the real destination may.

With ``--rollback`` it also runs the reverse consumer from the start (an inverse transform
configured), writes the new schema to the destination after the cutover, rolls back with
writers fenced and checks that every one of those writes reached the source.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from livemigrate.aws import AwsClients
from livemigrate.client import ActiveTable
from livemigrate.control import ControlStore
from livemigrate.demo_data import (
    HOT_KEY,
    CutoverLoad,
    LiveLoad,
    create_source_table,
    demo_items,
    enable_stream,
    seed_table,
)
from livemigrate.errors import LivemigrateError
from livemigrate.examples.hot_outbox import inverse, transform
from livemigrate.items import to_plain, to_typed
from livemigrate.keys import CONSUMER_SOURCE, DLQ_PREFIX, TOMBSTONES
from livemigrate.tables import create_like, describe
from livemigrate.versioning import user_attributes

# --source kinesis: the bridge's unfaithfulness (every 10th record put twice, records shuffled
# within windows of 4), and the delivery margin the watermark allows.
DUPLICATE_EVERY, REORDER_WINDOW = 10, 4
KINESIS_MARGIN = 5.0

NEEDS_SETTINGS = False  # the demo makes its own migration; see cli.main


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--items", type=int, default=4000, help="source items (default 4000)")
    parser.add_argument("--hot-share", type=float, default=0.5, help="share under the hot key")
    parser.add_argument("--load-rate", type=float, default=40.0, help="live writes/s (40)")
    parser.add_argument("--workers", type=int, default=4, help="backfill workers (4)")
    parser.add_argument("--no-search", action="store_true", help="skip the search index")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up after (600 s)")
    parser.add_argument("--json", action="store_true", help="print the full summary as JSON")
    parser.add_argument(
        "--source",
        choices=("dynamodb-streams", "kinesis"),
        default="dynamodb-streams",
        help="change source: the table's stream, or a Kinesis data stream fed by the bridge",
    )
    parser.add_argument(
        "--rollback",
        action="store_true",
        help="also run the reverse consumer, write the destination after the cutover, roll back",
    )


@dataclass
class Demo:
    """One demo run: names, child processes, timings."""

    args: argparse.Namespace
    clients: AwsClients
    stamp: str = field(default_factory=lambda: time.strftime("%Y%m%d%H%M%S"))
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    bridge: Any = None  # stream_consumer.kinesis.bridge.StreamBridge with --source kinesis
    bridge_stop: threading.Event = field(default_factory=threading.Event)

    @property
    def kinesis(self) -> bool:
        return bool(self.args.source == "kinesis")

    @property
    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "LIVEMIGRATE_MIGRATION_ID": f"demo-{self.stamp}",
            "LIVEMIGRATE_SOURCE_TABLE": f"demo-app-{self.stamp}",
            "LIVEMIGRATE_DESTINATION_TABLE": f"demo-app-v2-{self.stamp}",
            "LIVEMIGRATE_CONTROL_TABLE": "livemigrate-control",
            "LIVEMIGRATE_TRANSFORM": "livemigrate.examples.hot_outbox:transform",
            "LIVEMIGRATE_WORKERS": str(self.args.workers),
        }
        if self.kinesis:
            env["LIVEMIGRATE_CHANGE_SOURCE"] = "kinesis"
            env["LIVEMIGRATE_KINESIS_STREAM"] = f"demo-app-changes-{self.stamp}"
            # The bridge pumps every 0.2 s; a loaded machine's moto can take seconds per call.
            env["LIVEMIGRATE_KINESIS_DELIVERY_MARGIN"] = str(KINESIS_MARGIN)
        if self.args.rollback:
            env["LIVEMIGRATE_INVERSE_TRANSFORM"] = "livemigrate.examples.hot_outbox:inverse"
        if self.search:
            env["LIVEMIGRATE_SEARCH_ALIAS"] = f"demo-app-{self.stamp}"
        else:
            env.pop("LIVEMIGRATE_SEARCH_URL", None)
        return env

    @property
    def search(self) -> bool:
        return not self.args.no_search and bool(os.environ.get("LIVEMIGRATE_SEARCH_URL"))

    @property
    def store(self) -> ControlStore:
        return ControlStore(self.clients.dynamodb, "livemigrate-control", f"demo-{self.stamp}")

    def say(self, text: str) -> None:
        print(f"[demo {time.strftime('%H:%M:%S')}] {text}", flush=True)

    def command(self, *argv: str) -> list[str]:
        return [sys.executable, "-m", "livemigrate.cli", "--log-level", "WARNING", *argv]

    def background(self, *argv: str) -> None:
        self.children.append(subprocess.Popen(self.command(*argv), env=self.env))

    def foreground(self, *argv: str) -> subprocess.CompletedProcess[str]:
        started = time.monotonic()
        result = subprocess.run(
            self.command(*argv),
            env=self.env,
            text=True,
            stdout=subprocess.PIPE,
            timeout=self.args.timeout,
            check=False,
        )
        self.timings[argv[0]] = time.monotonic() - started
        return result

    def stop_children(self) -> None:
        self.bridge_stop.set()
        for child in self.children:
            child.terminate()
        for child in self.children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()

    def wait_for(self, what: str, check: Any, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise LivemigrateError(f"demo: timed out waiting for {what}")
            time.sleep(0.5)


def run(args: argparse.Namespace, settings: object, clients: AwsClients) -> int:
    demo = Demo(args, clients)
    try:
        return _run(demo)
    finally:
        demo.stop_children()


def _run(demo: Demo) -> int:
    env = demo.env
    source, destination = env["LIVEMIGRATE_SOURCE_TABLE"], env["LIVEMIGRATE_DESTINATION_TABLE"]
    started = time.monotonic()
    demo.say(f"source {source}: {demo.args.items} items, {demo.args.hot_share:.0%} under {HOT_KEY}")
    # History first, then the stream: like a real table, whose stream holds only recent changes.
    create_source_table(demo.clients.dynamodb, source, stream=False)
    seed_table(demo.clients.dynamodb, source, demo_items(demo.args.items, demo.args.hot_share))
    enable_stream(demo.clients.dynamodb, source)
    create_like(
        demo.clients.dynamodb, describe(demo.clients.dynamodb, source, "source"), destination
    )
    if demo.kinesis:
        _start_bridge(demo)
    demo.say(
        "starting the stream consumer first: it records where the stream starts, so no write "
        "made during the backfill is missed"
    )
    demo.background("consume", "--settle-seconds", "3", "--lease-seconds", "10")
    demo.wait_for(
        "the consumer to start",
        lambda: demo.store.exists() and any(demo.store.query(CONSUMER_SOURCE)),
    )
    if demo.search:
        demo.say("starting the search sink")
        demo.background("search", "sync", "--lease-seconds", "10")
    if demo.args.rollback:
        demo.say("starting the reverse consumer (destination -> source, for a lossless rollback)")
        demo.background("reverse", "--lease-seconds", "10")
    keys = [(str(i["pk"]), str(i["sk"])) for i in demo_items(demo.args.items, demo.args.hot_share)]
    load = LiveLoad(demo.clients.dynamodb, source, keys, rate=demo.args.load_rate).start()
    demo.say(f"live write load on the source at {demo.args.load_rate:.0f} ops/s; backfill starts")
    backfill = demo.foreground("backfill", "--workers", str(demo.args.workers))
    load_stats = load.stop()
    if backfill.returncode != 0:
        demo.say(f"backfill failed (exit {backfill.returncode})")
        return 1
    demo.say(f"backfill complete in {demo.timings['backfill']:.1f}s; live load stopped")
    demo.wait_for(
        "tombstones to be purged",
        lambda: (
            (demo.store.get(TOMBSTONES) or {}).get("state") == "purged"
            and (not demo.kinesis or _no_tombstones(demo))
        ),
        # Kinesis: the last tombstones go once the consumer has caught up past them plus the
        # delivery margin, which on a loaded machine can take minutes after the backfill.
        timeout=max(180.0, demo.args.timeout) if demo.kinesis else 180,
    )
    verify = demo.foreground("verify", "--json")
    demo.say(f"verify exit {verify.returncode}")
    cutover, across = _cut_over(demo)
    result = _last_json(cutover.stdout)
    rolled_back = _roll_back(demo) if demo.args.rollback and cutover.returncode == 0 else None
    summary = _summary(demo, load_stats.__dict__, verify, result, time.monotonic() - started)
    summary["rollback"] = rolled_back
    if demo.bridge is not None:
        summary["bridge"] = {
            "stream": env["LIVEMIGRATE_KINESIS_STREAM"],
            "changes": demo.bridge.copied,
            "records": demo.bridge.put,
            "reorder_window": REORDER_WINDOW,
        }
    summary["across_cutover"] = across
    if demo.args.json:
        print(json.dumps(summary, indent=2, sort_keys=True, default=str))
    else:
        print(render_summary(summary))
    ok = verify.returncode == 0 and cutover.returncode == 0 and across["lost"] == 0
    return 0 if ok and (rolled_back is None or rolled_back["lost"] == 0) else 1


def _start_bridge(demo: Demo) -> None:
    """A Kinesis stream and the bridge that feeds it from the table's stream (a thread)."""
    from stream_consumer.kinesis.bridge import Chaos, StreamBridge, create_stream

    env, clients = demo.env, demo.clients
    if clients.kinesis is None:
        raise LivemigrateError("demo: no Kinesis client", "run the demo through `livemigrate`")
    stream = env["LIVEMIGRATE_KINESIS_STREAM"]
    create_stream(clients.kinesis, stream, shards=2)
    table_stream = describe(clients.dynamodb, env["LIVEMIGRATE_SOURCE_TABLE"], "source").stream_arn
    if table_stream is None:
        raise LivemigrateError("demo: the source table has no stream for the bridge")
    demo.bridge = StreamBridge(
        clients.streams,
        clients.kinesis,
        table_stream,
        stream,
        env["LIVEMIGRATE_SOURCE_TABLE"],
        chaos=Chaos(duplicate_every=DUPLICATE_EVERY, reorder_window=REORDER_WINDOW, seed=14),
    )
    threading.Thread(
        target=demo.bridge.run, args=(demo.bridge_stop,), name="kinesis-bridge", daemon=True
    ).start()
    demo.say(
        f"change source: Kinesis stream {stream}, fed from the table's stream by the bridge "
        f"(every {DUPLICATE_EVERY}th record twice, shuffled within {REORDER_WINDOW})"
    )


def _no_tombstones(demo: Demo) -> bool:
    """No tombstone left in the destination (Kinesis: swept below the watermark)."""
    kwargs: dict[str, Any] = {
        "TableName": demo.env["LIVEMIGRATE_DESTINATION_TABLE"],
        "FilterExpression": "#t = :true",
        "ExpressionAttributeNames": {"#t": "_lm_tomb"},
        "ExpressionAttributeValues": {":true": {"BOOL": True}},
        "ConsistentRead": True,
        "Select": "COUNT",
    }
    while True:  # every page: a scan reads 1 MB at a time
        page = demo.clients.dynamodb.scan(**kwargs)
        if int(page.get("Count", 0)):
            return False
        if "LastEvaluatedKey" not in page:
            return True
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _cut_over(demo: Demo) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """The fenced cutover while the application keeps writing with checked writes: each write
    lands on the table the flag names when it lands, so the fence does not wait for flag caches
    (``--checked-writes``); moto puts a write in the stream before it answers, so the stream
    margin is short here (on AWS keep the default). Every acknowledged write must end up in the
    destination."""
    env = demo.env
    active = ActiveTable.from_control_table(
        demo.clients.dynamodb, "livemigrate-control", env["LIVEMIGRATE_MIGRATION_ID"]
    )
    load = CutoverLoad(active, env["LIVEMIGRATE_SOURCE_TABLE"], transform).start()
    time.sleep(1.0)
    cutover = demo.foreground(
        "cutover", "--fenced", "--checked-writes", "--consumer-margin", "0.2", "--json"
    )
    time.sleep(1.0)  # a few writes after the flip, on the destination
    load.stop()
    destination = env["LIVEMIGRATE_DESTINATION_TABLE"]
    lost = [
        k for k in load.acknowledged if _source_item(demo.clients.dynamodb, destination, k) is None
    ]
    on_source = sum(1 for t in load.acknowledged.values() if t != destination)
    return cutover, {
        "acknowledged": len(load.acknowledged),
        "on_source": on_source,
        "on_destination": len(load.acknowledged) - on_source,
        "errors": load.errors,
        "races": active.races,
        "lost": len(lost),
    }


def _roll_back(demo: Demo) -> dict[str, Any]:
    """The new-schema application writes the destination, then the operator rolls back: every
    one of those writes must be in the source afterwards (puts in the source's schema, deletes
    gone)."""
    env, ddb = demo.env, demo.clients.dynamodb
    source, destination = env["LIVEMIGRATE_SOURCE_TABLE"], env["LIVEMIGRATE_DESTINATION_TABLE"]
    written, deleted = _write_new_schema(ddb, destination)
    demo.say(f"{len(written)} puts and {len(deleted)} deletes on the destination; rolling back")
    rollback = demo.foreground(
        "rollback", "--fenced", "--checked-writes", "--consumer-margin", "0.2"
    )
    pause = next(
        (
            line.rsplit(":", 1)[1].strip()
            for line in rollback.stdout.splitlines()
            if "pause" in line
        ),
        "?",
    )
    lost = [k for k, item in written.items() if _source_item(ddb, source, k) != item]
    lost += [k for k in deleted if _source_item(ddb, source, k) is not None]
    return {
        "code": rollback.returncode,
        "pause": pause,
        "writes": len(written) + len(deleted),
        "lost": len(lost) if rollback.returncode == 0 else len(written) + len(deleted),
    }


def _write_new_schema(
    ddb: Any, table: str
) -> tuple[dict[tuple[str, str], dict[str, Any]], list[tuple[str, str]]]:
    """Puts of new items and deletes of old ones, as the application does after the cutover."""
    written: dict[tuple[str, str], dict[str, Any]] = {}
    for n in range(40):
        source_item: dict[str, Any] = {
            "pk": f"user|after-cutover-{n % 4}",
            "sk": f"note-{n:03d}",
            "createdAt": Decimal(1_767_225_600 + n),
            "status": "written to the new table",
        }
        ddb.put_item(TableName=table, Item=to_typed(next(iter(transform(source_item)))))
        written[(source_item["pk"], source_item["sk"])] = source_item
    deleted = []
    for raw in ddb.scan(TableName=table, Limit=200).get("Items", [])[::10]:
        ddb.delete_item(TableName=table, Key={"pk": raw["pk"], "sk": raw["sk"]})
        origin = next(iter(inverse(to_plain(raw))))  # the source item it came from
        deleted.append((str(origin["pk"]), str(origin["sk"])))
    return written, deleted


def _source_item(ddb: Any, table: str, key: tuple[str, str]) -> dict[str, Any] | None:
    got = ddb.get_item(
        TableName=table, Key=to_typed({"pk": key[0], "sk": key[1]}), ConsistentRead=True
    ).get("Item")
    if got is None:
        return None
    return user_attributes(to_plain(got))


def _last_json(text: str) -> dict[str, Any]:
    """The JSON object a command printed: the whole output, or its last JSON line."""
    try:
        whole: dict[str, Any] = json.loads(text)
        return whole
    except json.JSONDecodeError:
        pass
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            parsed: dict[str, Any] = json.loads(line)
            return parsed
    return {}


def _summary(
    demo: Demo,
    load: dict[str, Any],
    verify: subprocess.CompletedProcess[str],
    cutover: dict[str, Any],
    seconds: float,
) -> dict[str, Any]:
    metrics = demo.store.metrics()
    consumer = next((item for _, item in demo.store.query(CONSUMER_SOURCE)), {})
    report = _last_json(verify.stdout)
    return {
        "migration_id": demo.env["LIVEMIGRATE_MIGRATION_ID"],
        "source_items_seeded": demo.args.items,
        "live_writes": load,
        "backfill_seconds": round(demo.timings.get("backfill", 0.0), 2),
        "total_seconds": round(seconds, 2),
        "items_read": metrics.get("items_read"),
        "items_written": metrics.get("items_written"),
        "conflicts_reconciled_superseded_by_live_write": metrics.get("superseded_by_live_write"),
        "consumer_lag_seconds": consumer.get("lag_seconds"),
        "dead_letters": demo.store.count(DLQ_PREFIX),
        "verification": "passed" if verify.returncode == 0 else "FAILED",
        "verification_report": report,
        "cutover": cutover,
        "write_pause_seconds": cutover.get("write_pause_seconds"),
    }


def _number(value: Any) -> float:
    return float(value) if value is not None else 0.0


def render_summary(summary: dict[str, Any]) -> str:
    """The operator's summary of a demo run, one fact a line."""
    load = summary["live_writes"]
    pause = summary["write_pause_seconds"]
    report = summary["verification_report"]
    search = report.get("search") or {}
    return "\n".join(
        [
            "",
            f"livemigrate demo: migration {summary['migration_id']}",
            f"  items            {summary['source_items_seeded']} seeded; backfill read "
            f"{_number(summary['items_read']):.0f}, wrote {_number(summary['items_written']):.0f}",
            f"  live writes      {load['puts']} puts, {load['updates']} updates "
            f"({load['key_moves']} moved month), {load['deletes']} deletes, "
            f"{load['errors']} errors",
            f"  time             backfill {summary['backfill_seconds']:.1f}s, "
            f"total {summary['total_seconds']:.1f}s",
            "  conflicts        "
            f"{_number(summary['conflicts_reconciled_superseded_by_live_write']):.0f} backfill "
            "writes superseded by live writes (the live write won)",
            f"  consumer lag     {_number(summary['consumer_lag_seconds']):.2f}s at cutover",
            f"  dead letters     {summary['dead_letters']}",
            f"  verification     {summary['verification']}: "
            f"{report.get('source_items', '?')} source items, missing/extra/different "
            f"{_counts(report)}; search {'passed' if search.get('passed') else search or 'n/a'}",
            f"  cutover          exit {summary['cutover'].get('code')}, "
            f"flag -> {(summary['cutover'].get('flag') or {}).get('table')}",
            f"  write pause      {pause:.2f}s (fenced)"
            if pause is not None
            else "  write pause  -",
            *_across_line(summary.get("across_cutover")),
            *_rollback_line(summary.get("rollback")),
            *_bridge_line(summary.get("bridge")),
        ]
    )


def _across_line(across: dict[str, Any] | None) -> list[str]:
    if across is None:
        return []
    kept = across["acknowledged"] - across["lost"]
    return [
        f"  across cutover   {across['acknowledged']} checked writes acknowledged "
        f"({across['on_source']} on the source, {across['on_destination']} on the destination, "
        f"{across['races']} retried after a flag change, {across['errors']} failed); "
        f"{kept} of {across['acknowledged']} in the destination"
    ]


def _rollback_line(rollback: dict[str, Any] | None) -> list[str]:
    if rollback is None:
        return []
    return [
        f"  rollback         exit {rollback['code']}, write pause {rollback['pause']} (fenced); "
        f"{rollback['writes'] - rollback['lost']} of {rollback['writes']} destination writes "
        "in the source"
    ]


def _bridge_line(bridge: dict[str, Any] | None) -> list[str]:
    if bridge is None:
        return []
    return [
        f"  change source    Kinesis {bridge['stream']}: {bridge['changes']} changes bridged as "
        f"{bridge['records']} records (duplicates, shuffled within {bridge['reorder_window']})"
    ]


def _counts(report: dict[str, Any]) -> str:
    counts = report.get("counts") or {}
    return "/".join(str(counts.get(k, "?")) for k in ("missing", "extra", "different"))


def main(argv: Sequence[str] | None = None) -> int:  # pragma: no cover - convenience
    from livemigrate.cli import main as cli_main

    return cli_main(["demo", *(argv or [])])
