"""`status` as scripts and people read it: the published JSON schema, and the cutover's gates."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jsonschema
from elasticsearch import Elasticsearch

from livemigrate.aws import AwsClients
from livemigrate.control import ControlStore
from livemigrate.exitcodes import ExitCode
from livemigrate.flag import ControlFlagStore
from tests.services import ES_URL
from tests.support.cutover import ready_store
from tests.support.operator import environment, finish, start
from tests.support.search import new_index

SCHEMA = Path(__file__).resolve().parents[2] / "livemigrate" / "status.schema.json"


def env_of(store: ControlStore, **extra: str) -> dict[str, str]:
    return environment(
        LIVEMIGRATE_MIGRATION_ID=store.migration_id,
        LIVEMIGRATE_SOURCE_TABLE="orders",
        LIVEMIGRATE_DESTINATION_TABLE="orders_v2",
        LIVEMIGRATE_CONTROL_TABLE=store.table,
        **extra,
    )


def busy_store(clients: AwsClients) -> ControlStore:
    """A migration with something in every part status reports."""
    store = ready_store(clients)
    now = time.time()
    store.put("PLAN", {"state": "running", "total_segments": 2, "created_at": now - 100})
    store.put("SEG#000000", {"state": "done", "items_read": 10, "items_written": 9})
    store.put(
        "SEG#000001",
        {"state": "pending", "lease_owner": "w1", "lease_expires": now + 30, "items_read": 3},
    )
    store.put(
        "SHARD#source#shardId-0001",
        {"lease_owner": "c1", "lease_expires": now + 30, "lag_seconds": 0.0399, "checkpoint": "9"},
    )
    store.put("RATES", {"read_rate": 200, "paused": True})
    store.add_metrics({"items_read": 13, "items_written": 9})
    flags = ControlFlagStore(store)
    flags.write(flags.read().fence(now - 120, 60), 0)  # a fence that expired
    return store


def test_status_json_follows_the_published_schema(clients: AwsClients) -> None:
    """GIVEN a migration with segments, leases, a shard, rates, counters and an expired fence
    WHEN `status --json` runs THEN stdout is only JSON, valid against status.schema.json, with
    numbers as numbers and times as ISO 8601."""
    store = busy_store(clients)
    code, out, err = finish(start(["status", "--json"], env_of(store)))
    assert code == ExitCode.OK, err
    summary: dict[str, Any] = json.loads(out)
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    ).validate(summary)
    assert summary["backfill"]["total_segments"] == 2
    assert summary["flag"]["epoch"] == 1
    assert summary["flag"]["fenced_until"].endswith("+00:00")
    assert summary["rates"] == {"read_rate": 200, "write_rate": None, "paused": True}
    # the same summary for people: no Python reprs, rounded durations, an expired fence named
    code, text, _ = finish(start(["status"], env_of(store)))
    for repr_hint in ("{'", "None", "0.0399", "SHARD#", "SEG#"):
        assert repr_hint not in text, (repr_hint, text)
    assert "fence expired at" in text and "lag 0.0s" in text and "PAUSED" in text


def test_status_and_cutover_agree_on_a_missing_search_index(
    clients: AwsClients, es: Elasticsearch
) -> None:
    """GIVEN every table gate met and search configured, but the sink never built its index
    WHEN status and cutover --dry-run run THEN both fail the search gate (one computation)."""
    store = ready_store(clients)
    env = env_of(store, LIVEMIGRATE_SEARCH_URL=ES_URL, LIVEMIGRATE_SEARCH_ALIAS=new_index(es))
    code, out, err = finish(start(["status", "--json"], env))
    assert code == ExitCode.OK, err
    gates = {g["name"]: g for g in json.loads(out)["gates"]}
    assert gates["search index ready"]["met"] is False
    assert "livemigrate search sync" in gates["search index ready"]["fix"]
    code, out, err = finish(start(["cutover", "--dry-run", "--json"], env))
    assert code == ExitCode.GATES_UNMET, err
    result = json.loads(out)  # stdout is only JSON; the gate lines went to stderr
    assert result["unmet"] == ["search index ready"]
    assert "[FAIL] search index ready" in err
