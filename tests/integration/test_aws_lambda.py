"""The Lambda handlers driven exactly as their AWS triggers drive them, against moto (issue 15):
the consumer and the search sink by batches of their table's real stream (``tests.lambda_esm``
plays the event source mapping), the backfill looped as the state machine loops it."""

from __future__ import annotations

from typing import Any

import pytest
from elasticsearch import Elasticsearch

from backfill import lambda_handler as backfill_lambda
from livemigrate.aws import AwsClients
from livemigrate.items import to_typed
from livemigrate.migration import Migration
from livemigrate.search.indices import live_index
from stream_consumer import lambda_handler
from tests.lambda_esm import StreamMapping
from tests.services import ES_URL, unique
from tests.support.lambdas import Context, FailsOnceAt, dest_items, new_migration, put


@pytest.fixture
def migration(clients: AwsClients, monkeypatch: pytest.MonkeyPatch) -> Migration:
    return new_migration(clients, monkeypatch)


def test_consumer_batch_with_a_failing_record_in_the_middle_is_retried_from_it_in_order(
    clients: AwsClients, migration: Migration
) -> None:
    # GIVEN the deployed consumer (a cold container) whose destination write of "c" fails once
    lambda_handler._STATE["forward"] = lambda_handler.forward_state()
    state = lambda_handler._STATE["forward"]
    state["sink"] = FailsOnceAt(state["sink"], "c")
    table = migration.settings.source_table
    # and a batch: a1, b, c (fails), a2 (the same item as a1, later), d
    for sk, n in (("a", 1), ("b", 1), ("c", 1), ("a", 2), ("d", 1)):
        put(clients, table, sk, n)
    mapping = StreamMapping(clients, table, lambda_handler.handler)
    # WHEN the mapping invokes the function once
    mapping.pump()
    # THEN everything before c is applied and nothing after it; c and later are reported
    first = mapping.responses[0]["batchItemFailures"]
    assert len(first) == 3
    held = dest_items(clients, migration)
    assert {sk: i["n"] for sk, i in held.items()} == {"a": 1, "b": 1}
    # WHEN the mapping delivers the batch again from c (and the invocations go on)
    mapping.drain()
    # THEN c, the later a and d are applied, in order: a holds its last value
    held = dest_items(clients, migration)
    assert {sk: i["n"] for sk, i in held.items()} == {"a": 2, "b": 1, "c": 1, "d": 1}
    assert [len(r["batchItemFailures"]) for r in mapping.responses] == [3, 0]
    # and the function reported itself as the Lambda-mode consumer, with its lag
    consumer = migration.store.get("CONSUMER#source") or {}
    assert consumer["mode"] == "lambda" and float(consumer["lag_seconds"]) < 600


@pytest.mark.slow
@pytest.mark.integration
def test_backfill_looped_as_the_state_machine_loops_it_resumes_to_completion(
    clients: AwsClients, migration: Migration
) -> None:
    # GIVEN a source of 24 items, the consumer deployed first, and a read cap of 4 items/s
    # with 4 s per invocation: one invocation cannot copy the table
    table = migration.settings.source_table
    for n in range(24):
        put(clients, table, f"item-{n:03d}", n)
    lambda_handler._STATE["forward"] = lambda_handler.forward_state()
    settings = migration.settings.model_copy(update={"read_rate": 4.0, "workers": 2})
    work = {"action": "work", "page_size": 4, "margin_seconds": 0.2}

    def start() -> list[dict[str, Any]]:
        """One start of the state machine: Plan, then the Map's workers loop until complete."""
        plan = backfill_lambda.invoke(
            {"action": "plan", "workers": 1}, Context(60), settings, clients
        )
        results: list[dict[str, Any]] = []
        for worker in plan["workers"]:
            for _ in range(12):
                event = {**work, "worker": worker}
                results.append(
                    backfill_lambda.invoke(event, Context(4, lazy=True), settings, clients)
                )
                if results[-1]["complete"]:
                    break
        return results

    # WHEN the state machine runs once
    results = start()
    # THEN the invocations resumed one another (several, only the last one complete) ...
    assert len(results) >= 2 and results[-1]["complete"]
    assert not any(r["complete"] for r in results[:-1])
    assert sum(r["items_read"] for r in results) == 24
    # ... and every item is in the destination
    assert len(dest_items(clients, migration)) == 24
    assert (migration.store.get("PLAN") or {})["state"] == "complete"
    # WHEN it is started again, THEN it resumes the (finished) plan: nothing is read twice
    again = start()
    assert sum(r["items_read"] for r in again) == 0 and again[-1]["complete"]


def test_search_handler_indexes_the_destination_stream(
    clients: AwsClients, migration: Migration, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN the search function configured with a node and an alias
    alias = unique("orders").lower()
    monkeypatch.setenv("LIVEMIGRATE_SEARCH_URL", ES_URL)
    monkeypatch.setenv("LIVEMIGRATE_SEARCH_ALIAS", alias)
    dest = migration.settings.destination_table
    for n in range(5):
        item = {"pk": "p", "sk": f"s{n}", "n": n}
        clients.dynamodb.put_item(TableName=dest, Item=to_typed(item))
    clients.dynamodb.delete_item(TableName=dest, Key=to_typed({"pk": "p", "sk": "s0"}))
    # WHEN the mapping on the destination's stream drives it
    mapping = StreamMapping(clients, dest, lambda_handler.search_handler)
    mapping.drain()
    # THEN the index holds the destination's items
    es = Elasticsearch(ES_URL)
    index = live_index(alias, migration.settings.migration_id)
    try:
        es.indices.refresh(index=index)
        hits = es.search(index=index, size=20)["hits"]["hits"]
        assert sorted(h["_source"]["sk"] for h in hits) == ["s1", "s2", "s3", "s4"]
        assert all(not r["batchItemFailures"] for r in mapping.responses)
    finally:
        es.indices.delete(index=index, ignore_unavailable=True)
