"""What the control table knows about a migration, for ``livemigrate status``."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from livemigrate import accounting, keys, retention
from livemigrate.control import ControlStore, with_unit_totals
from livemigrate.deadletters import DeadLetters
from livemigrate.gates import Gate, Policy, check_all, read_snapshot, unmet

GateCheck = Callable[[float], list[Gate]]


def collect(
    store: ControlStore, source_items: int | None = None, gates: GateCheck | None = None
) -> dict[str, Any]:
    """A JSON-safe summary; ``known: False`` when nothing is recorded yet.

    ``source_items`` (DynamoDB's approximate ItemCount of the source) gives progress and ETA.
    ``gates`` evaluates the cutover gates at a time (the CLI passes ``cutover.evaluate_gates``
    with the migration's policy and search index, so status and cutover agree); without it
    the gates are read from the control table with the default policy and no search check.
    """
    if not store.exists():
        return {
            "migration_id": store.migration_id,
            "known": False,
            "control_table": store.table,
            "note": f"control table {store.table!r} does not exist yet: nothing has run",
        }
    groups: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for sk, item in store.query(""):
        groups.setdefault(keys.kind(sk), []).append((sk, item))
    if not groups:
        return {
            "migration_id": store.migration_id,
            "known": False,
            "control_table": store.table,
            "note": "nothing is recorded for this migration yet",
        }
    now = time.time()
    meta = _one(groups, keys.META)
    plan = _one(groups, keys.PLAN)
    counters = with_unit_totals(_one(groups, keys.METRICS), _units(groups))
    segments, splits = _all(groups, keys.SEG_PREFIX), _all(groups, keys.SPLIT_PREFIX)
    backfill = _backfill(plan, segments, splits, now, counters)
    backfill.update(_progress(plan, backfill["items_read"], source_items, now))
    if gates is None:
        policy = Policy(require_reverse=bool(meta.get("inverse_transform")))
        verdicts = check_all(read_snapshot(store, now=now), policy)
    else:
        verdicts = gates(now)
    return {
        "migration_id": store.migration_id,
        "known": True,
        "control_table": store.table,
        "spec": meta,
        "phase": _stopped(_phase(plan, groups, verdicts), backfill),
        "gates": [gate_dict(g) for g in verdicts],
        "backfill": backfill,
        "stream": _shards(_all(groups, keys.SHARD_PREFIX), _all(groups, keys.CONSUMER_PREFIX), now),
        "dead_letters": DeadLetters(store).count(),
        "dead_letters_unresolved": DeadLetters(store).unresolved(),
        "flag": _one(groups, keys.FLAG),
        "metrics": _without_costs(counters),
        "rates": rates_of(_one(groups, keys.RATES)),
        "retention": retention.summary(
            _one(groups, keys.RETENTION), _one(groups, keys.CONSUMER_SOURCE).get("lag_seconds")
        ),
        "requests": requests_of(groups),
        "exports": exports_of(groups, store),
    }


def _one(groups: Mapping[str, list[tuple[str, dict[str, Any]]]], sk: str) -> dict[str, Any]:
    """The item ``sk`` (empty when absent)."""
    group = groups.get(keys.kind(sk), [])
    return next((dict(item) for key, item in group if key == sk), {})


def _units(groups: Mapping[str, list[tuple[str, dict[str, Any]]]]) -> list[dict[str, Any]]:
    """The backfill's unit items: segments (or export files) and splits."""
    return [item for prefix in keys.UNIT_PREFIXES for _, item in _all(groups, prefix)]


def _all(
    groups: Mapping[str, list[tuple[str, dict[str, Any]]]], prefix: str
) -> list[tuple[str, dict[str, Any]]]:
    """The items of one family (``keys.SEG_PREFIX``, ...) or the one item ``prefix`` names."""
    return groups.get(keys.kind(prefix), [])


def exports_of(
    groups: Mapping[str, list[tuple[str, dict[str, Any]]]], store: ControlStore
) -> list[dict[str, Any]]:
    """The exports ``livemigrate export start`` recorded, with their progress now (DescribeExport
    when it answers, else the last recorded state; nothing is written)."""
    out = []
    for sk, item in _all(groups, keys.EXPORT_PREFIX):
        arn = str(item.get("export_arn"))
        status, count = item.get("status"), int(item.get("item_count") or 0)
        live = _describe_export(store, arn)
        if live is not None:
            status = live.get("ExportStatus", status)
            count = int(live.get("ItemCount") or count)
        out.append(
            {
                "export_id": sk.split("#", 1)[1],
                "export_arn": arn,
                "status": status,
                "export_time": iso(float(item["export_time"])) if "export_time" in item else None,
                "item_count": count,
            }
        )
    return out


def _describe_export(store: ControlStore, arn: str) -> Mapping[str, Any] | None:
    try:
        return store.client.describe_export(ExportArn=arn)["ExportDescription"]
    except (ClientError, BotoCoreError):  # status still shows the recorded state
        return None


def requests_of(groups: Mapping[str, list[tuple[str, dict[str, Any]]]]) -> dict[str, Any]:
    """Request totals (``livemigrate.accounting``): the backfill's ride on its units'
    checkpoints and on METRICS, each consumer's on its CONSUMER# heartbeat; summed per table
    role and operation."""
    merged: dict[str, float] = {}
    carriers = (keys.METRICS, keys.CONSUMER_PREFIX, *keys.UNIT_PREFIXES)
    for _, item in [found for kind in carriers for found in _all(groups, kind)]:
        for name, value in item.items():
            if name.startswith(accounting.PREFIX):
                merged[name] = merged.get(name, 0.0) + float(value)
    by_role = accounting.unflatten(merged)
    totals = {
        role: {f: sum(op[f] for op in ops.values()) for f in accounting.FIELDS}
        for role, ops in by_role.items()
    }
    return {"by_operation": by_role, "by_role": totals}


def _without_costs(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if not k.startswith(accounting.PREFIX)}


def gate_dict(gate: Gate) -> dict[str, Any]:
    """A gate's verdict as JSON (status and cutover print the same shape)."""
    return {"name": gate.name, "met": gate.met, "why": gate.why, "fix": gate.fix}


def _phase(
    plan: dict[str, Any], groups: dict[str, list[tuple[str, dict[str, Any]]]], gates: list[Gate]
) -> str:
    flag = _one(groups, keys.FLAG)
    reverse = [
        item for sk, item in _all(groups, keys.CONSUMER_PREFIX) if sk == keys.CONSUMER_REVERSE
    ]
    if flag.get("active") == "destination":
        if reverse:
            return "cut over (the reverse consumer keeps the source current for a rollback)"
        return "cut over"
    if groups.get(keys.ROLLBACK):
        return "rolled back (the source is active; the consumer keeps the destination current)"
    if not _all(groups, keys.CONSUMER_PREFIX):
        return "not started (start the consumer first: livemigrate consume)"
    if plan.get("state") != "complete":
        return "backfilling" if plan else "consumer running, backfill not started"
    if unmet(gates):
        return "backfill complete; cutover gates not yet met"
    return "ready for cutover"


def rates_of(item: dict[str, Any]) -> dict[str, Any]:
    """The live rate caps (``livemigrate throttle``); None: not set, the settings apply."""
    return {
        "read_rate": item.get("read_rate"),
        "write_rate": item.get("write_rate"),
        "paused": bool(item.get("paused", False)),
    }


def rates_line(rates: dict[str, Any]) -> str:
    def cap(value: Any) -> str:
        if value is None:
            return "from settings"
        return "no cap" if float(value) == 0 else f"{float(value):g}/s"

    paused = "; PAUSED (livemigrate throttle --resume)" if rates["paused"] else ""
    return f"  rates: read {cap(rates['read_rate'])}, write {cap(rates['write_rate'])}{paused}"


def _stopped(phase: str, backfill: dict[str, Any]) -> str:
    before_cutover = not phase.startswith(("cut over", "rolled back"))
    if before_cutover and backfill["workers"] == "stopped":
        return "backfill stopped: no worker is running (run `livemigrate backfill` to continue)"
    return phase


def _progress(
    plan: dict[str, Any], read: int, source_items: int | None, now: float
) -> dict[str, Any]:
    if not source_items or not plan or plan.get("state") == "complete":
        return {"percent": 100.0 if plan.get("state") == "complete" else None, "eta_seconds": None}
    percent = min(100.0, 100.0 * read / source_items)
    elapsed = now - float(plan.get("created_at", now))
    rate = read / elapsed if elapsed > 0 else 0.0
    eta = retention.seconds_left(source_items - read, rate) if read < source_items else None
    return {"percent": round(percent, 1), "eta_seconds": None if eta is None else round(eta)}


def _backfill(
    plan: dict[str, Any],
    segments: list[tuple[str, dict[str, Any]]],
    splits: list[tuple[str, dict[str, Any]]],
    now: float,
    counters: dict[str, Any],
) -> dict[str, Any]:
    states = Counter(str(item.get("state", "pending")) for _, item in segments)
    leased = sum(1 for _, item in segments if float(item.get("lease_expires", 0)) > now)
    state = str(plan.get("state", "not planned"))
    return {
        "state": state,
        # "stopped": planned or running, but no worker holds a lease (Ctrl-C, budget, crash
        # past its lease): nothing copies until `livemigrate backfill` runs again.
        "workers": "working" if leased else ("stopped" if state in ("planned", "running") else "-"),
        "total_segments": plan.get("total_segments"),
        "segments_by_state": dict(states),
        "segments_leased": leased,
        "hot_key_splits": [
            {"id": sk, "state": item.get("state"), "hot_key": item.get("hot_key")}
            for sk, item in splits
        ],
        "items_read": counters["items_read"],  # the units' sums (with_unit_totals)
        "items_written": counters["items_written"],
        # A worker records the start and the end of an outage on PLAN (backfill/health.py).
        "degraded": float(plan.get("degraded_at") or 0) > float(plan.get("recovered_at") or 0),
    }


def _shards(
    shards: list[tuple[str, dict[str, Any]]],
    consumers: list[tuple[str, dict[str, Any]]],
    now: float,
) -> dict[str, Any]:
    return {
        "consumer_started": [
            {"name": sk.split("#", 1)[1], **_without_costs(item)} for sk, item in consumers
        ],
        "shards": [
            {
                "id": sk,
                "owner": item.get("lease_owner")
                if float(item.get("lease_expires", 0)) > now
                else None,
                "checkpoint": item.get("checkpoint"),
                "finished": bool(item.get("finished", False)),
                "lag_seconds": item.get("lag_seconds"),
                "records_applied": item.get("records_applied"),
                "parents": item.get("parents", []),
            }
            for sk, item in shards
        ],
    }


def _seconds(value: Any) -> str:
    """A duration for people: 0.04 -> '0.0s', 75 -> '1m15s', 7300 -> '2h01m'."""
    if value is None:
        return "-"
    seconds = float(value)
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def _ago(at: Any) -> str:
    return "never" if not at else f"{_seconds(time.time() - float(at))} ago"


def _consumer_lines(consumer: dict[str, Any]) -> list[str]:
    lines = [
        f"    {consumer.get('name', '?'):<8} lag {_seconds(consumer.get('lag_seconds'))}, "
        f"records behind >= {consumer.get('records_behind', '-')}, "
        f"last heartbeat {_ago(consumer.get('heartbeat_at'))}"
    ]
    if consumer.get("records_lost_at") is not None:
        lines.append(
            f"      RECORDS LOST: shard {consumer.get('records_lost_shard')} was trimmed "
            "before it was read; verify (and repair) before relying on this table"
        )
    if consumer.get("degraded_since") is not None:
        lines.append(
            f"      DEGRADED since {_ago(consumer.get('degraded_since'))}: the service does not "
            "answer; it retries and carries on when it does"
        )
    if consumer.get("retired_writes"):
        keys = ", ".join(str(k) for k in consumer.get("retired_last_keys") or [])
        latest = _ago(consumer.get("retired_last_at"))
        lines.append(
            f"      RETIRED TABLE WRITTEN: {consumer['retired_writes']} change(s) made to the "
            f"retired table after the flip were not applied (latest {latest}: {keys}); find "
            "the writer that still uses the old table"
        )
    return lines


def _dead_letter_lines(summary: dict[str, Any]) -> list[str]:
    lines = [f"  dead letters: {summary['dead_letters']}"]
    if summary.get("dead_letters_unresolved"):
        lines.append(
            f"    {summary['dead_letters_unresolved']} unresolved: livemigrate dead-letters list "
            "/ show ID / replay --all / ack ID... --reason TEXT"
        )
    return lines


def _shard_line(shard: dict[str, Any]) -> str:
    name = str(shard["id"]).split("#")
    consumer, shard_id = (name[1], name[-1]) if len(name) >= 3 else ("?", name[-1])
    state = "finished" if shard["finished"] else f"held by {shard['owner'] or 'nobody'}"
    return (
        f"    {consumer:<8} {shard_id:<28} {state}, lag {_seconds(shard['lag_seconds'])}, "
        f"applied {shard['records_applied'] or 0}"
    )


def _backfill_lines(bf: dict[str, Any]) -> list[str]:
    progress = ""
    if bf.get("percent") is not None:
        eta = bf.get("eta_seconds")
        progress = f", {bf['percent']:.1f}%" + (f", ETA {_seconds(eta)}" if eta else "")
    by_state = ", ".join(f"{n} {state}" for state, n in sorted(bf["segments_by_state"].items()))
    degraded = " (DEGRADED: the service does not answer; workers retry)" if bf["degraded"] else ""
    lines = [
        f"  backfill: {bf['state']}{progress}; workers {bf['workers']}{degraded}",
        f"    segments {bf['total_segments'] or '?'} ({by_state or 'none yet'}), "
        f"{bf['segments_leased']} leased; items read {bf['items_read']}, "
        f"written {bf['items_written']}",
    ]
    for split in bf["hot_key_splits"]:
        part = str(split["id"]).removeprefix(keys.SPLIT_PREFIX)
        lines.append(f"    hot-key split {part}: {split['state']} (key {split['hot_key']})")
    return lines


def _flag_line(flag: dict[str, Any]) -> str:
    now = time.time()
    fence = "not fenced"
    until = float(flag.get("fenced_until") or 0)
    if flag.get("fenced") and until > now:
        fence = f"FENCED until {iso(until)}"
    elif flag.get("fenced"):
        fence = f"fence expired at {iso(until)} (writers no longer wait)"
    return (
        f"  flag: active {flag.get('active')} ({flag.get('table')}), epoch {flag.get('epoch')}, "
        f"{fence}"
    )


def render(summary: dict[str, Any]) -> str:
    """Human-readable text of ``collect``'s summary (no Python reprs; rounded durations)."""
    lines = [f"migration {summary['migration_id']} (control table {summary['control_table']})"]
    if not summary["known"]:
        lines.append(f"  {summary['note']}")
        return "\n".join(lines)
    spec = summary["spec"]
    lines.append(
        f"  {spec.get('source_table')} -> {spec.get('destination_table')} "
        f"via {spec.get('transform') or 'the configured transform'}"
    )
    lines.append(f"  phase: {summary['phase']}")
    lines.extend(_backfill_lines(summary["backfill"]))
    lines.append(rates_line(summary["rates"]))
    lines.append(retention.status_line(summary["retention"]))
    stream = summary["stream"]
    lines.append(f"  stream consumers: {len(stream['consumer_started']) or 'not started'}")
    for consumer in stream["consumer_started"]:
        lines.extend(_consumer_lines(consumer))
    lines.extend(_shard_line(shard) for shard in stream["shards"])
    lines.extend(_export_lines(summary.get("exports") or []))
    lines.extend(_dead_letter_lines(summary))
    lines.append("  cutover gates:")
    for gate in summary["gates"]:
        mark = "ok" if gate["met"] else "no"
        note = f": {gate['why']}" if gate["why"] else ""
        lines.append(f"    [{mark}] {gate['name']}{note}")
    if summary["flag"]:
        lines.append(_flag_line(summary["flag"]))
    lines.extend(_request_lines(summary.get("requests") or {}))
    if summary["metrics"]:
        width = max(len(str(k)) for k in summary["metrics"])
        lines.append("  counters:")
        for name, value in sorted(summary["metrics"].items()):
            lines.append(f"    {name:<{width}}  {to_json(value)}")
    return "\n".join(lines)


def _export_lines(exports: list[dict[str, Any]]) -> list[str]:
    return [
        f"  export {e['export_id']}: {e['status']}, taken at {e['export_time'] or '?'}, "
        f"{e['item_count']} items"
        for e in exports
    ]


def _request_lines(requests: Mapping[str, Any]) -> list[str]:
    by_role = requests.get("by_role") or {}
    if not by_role:
        return []
    lines = ["  requests (capacity units computed from item sizes):"]
    for role in accounting.ROLES:
        if role in by_role:
            t = by_role[role]
            lines.append(
                f"    {role:<11}  {t['requests']:>10.0f} requests  {t['read_units']:>12.1f} RCU"
                f"  {t['write_units']:>12.1f} WCU"
            )
    return lines


# Fields that hold a Unix time: ``to_json`` prints them as ISO 8601 (UTC).
TIME_FIELDS = frozenset(
    {
        "at",
        "created_at",
        "completed_at",
        "started_at",
        "heartbeat_at",
        "flipped_at",
        "fenced_at",
        "fenced_until",
        "lease_expires",
        "read_from",
        "drain_after",
        "purged_at",
        "real_deletes_since",
        "records_lost_at",
        "delete_marks_since",
        "unmarked_deletes_at",
        "updated_at",
    }
)


def iso(at: float) -> str:
    """A Unix time as ISO 8601 in UTC, to the millisecond."""
    return datetime.fromtimestamp(at, tz=UTC).isoformat(timespec="milliseconds")


def to_json(value: Any, name: str = "") -> Any:
    """``collect``'s summary for ``--json``: numbers as numbers, times as ISO 8601 strings.

    DynamoDB gives numbers as ``Decimal``; they become int (integral) or float. A number in a
    field named in ``TIME_FIELDS`` (0 meaning "never") becomes an ISO 8601 string or None.
    """
    if isinstance(value, Mapping):
        return {str(k): to_json(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [to_json(v) for v in value]
        return sorted(items, key=str) if isinstance(value, set | frozenset) else items
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Decimal | int | float):
        number: int | float = int(value) if value == int(value) else float(value)
        if name in TIME_FIELDS:
            return iso(float(number)) if number else None
        return number
    if isinstance(value, bytes):
        return value.hex()
    return str(value)
