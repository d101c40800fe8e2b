"""Least privilege that cannot drift (issue 15): each function's role in infra/aws/livemigrate.yaml
grants exactly the AWS calls its code makes.

Each handler is driven against moto as its trigger drives it, with a botocore ``before-call``
hook on its clients recording (action, resource) of every call. The test then asserts both ways:
every recorded call is granted by the function's role, and every grant is either recorded or
listed below with the reason the code path was not driven (or the Lambda service, not the code,
uses it: the event source mapping reads the stream and sends to the failure queue).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from backfill import lambda_handler as backfill_lambda
from livemigrate import aws
from livemigrate.aws import AwsClients
from livemigrate.flag import ControlFlagStore
from livemigrate.items import to_plain, to_typed
from livemigrate.lambda_mode import watermark_item
from livemigrate.migration import Migration
from livemigrate.versioning import user_attributes
from stream_consumer import lambda_handler
from tests import cfn
from tests.lambda_esm import StreamMapping
from tests.services import ES_URL, scan_all, unique
from tests.support.lambdas import Context, new_migration, put

Grant = tuple[str, str]  # (IAM action, resource kind)
LOGS = {
    ("logs:CreateLogGroup", "logs"),
    ("logs:CreateLogStream", "logs"),
    ("logs:PutLogEvents", "logs"),
}
STREAM_READS = ("DescribeStream", "GetRecords", "GetShardIterator", "ListStreams")


def stream(kind: str) -> set[Grant]:
    return {(f"dynamodb:{action}", kind) for action in STREAM_READS}


# Grants the code does not use itself in these tests, each with its reason.
NOT_THE_CODE: dict[str, set[Grant]] = {
    # the Lambda service: logs, the mapping's polling and its OnFailure send
    "ConsumerRole": LOGS
    | stream("source-stream")
    | {("sqs:SendMessage", "failure-queue")}
    # real deletes: the delete mode refreshes 5 s after the backfill completes (not waited for)
    | {("dynamodb:DeleteItem", "destination")}
    # marked deletes while a cutover is armed (an inverse transform configured)
    | {("dynamodb:UpdateItem", "destination")}
    # the ownership check (rule 12) when an update moves an item's destination keys
    | {("dynamodb:GetItem", "source")},
    # hot-key splits are read with Query by sort-key range (the test's table has no hot key)
    "BackfillRole": LOGS | {("dynamodb:Query", "source")},
    # dead letters of documents the node rejects
    "SearchRole": LOGS
    | stream("destination-stream")
    | {("dynamodb:PutItem", "control"), ("dynamodb:UpdateItem", "control")},
    "ReverseRole": LOGS | stream("destination-stream"),
}

FUNCTIONS = {
    "ConsumerFunction": "ConsumerRole",
    "BackfillFunction": "BackfillRole",
    "SearchFunction": "SearchRole",
    "ReverseFunction": "ReverseRole",
}

KINDS = (
    ("${SourceTableName}/stream", "source-stream"),
    ("${DestinationTableName}/stream", "destination-stream"),
    ('"ControlTable"', "control"),
    ("${SourceTableName}", "source"),
    ("${DestinationTableName}", "destination"),
    ("${ControlTableName}", "control"),
    ('"SourceStreamArn"', "source-stream"),
    ('"DestinationStreamArn"', "destination-stream"),
    ('"FailureQueue"', "failure-queue"),
    (":logs:", "logs"),
)


def resource_kind(resource: Any) -> str:
    text = json.dumps(resource)
    for marker, kind in KINDS:
        if marker in text:
            return kind
    raise AssertionError(f"a resource the test does not know: {text}")


def granted(template: dict[str, Any], role: str) -> set[Grant]:
    out: set[Grant] = set()
    for statement in cfn.statements(template, role):
        assert statement["Effect"] == "Allow" and "*" not in json.dumps(statement["Action"])
        for resource in _listed(statement["Resource"]):
            out |= {(action, resource_kind(resource)) for action in statement["Action"]}
    return out


TRANSACT = {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem"}


@dataclass
class Calls:
    """Every AWS call made through the clients it is attached to, as (action, resource kind)."""

    tables: Mapping[str, str]
    seen: set[Grant] = field(default_factory=set)

    def hook(self, model: Any, params: Mapping[str, Any], **_: Any) -> None:
        prefix = model.service_model.signing_name
        for action, table in self._targets(model.name, params):
            self.seen.add((f"{prefix}:{action}", self.tables.get(table, table)))

    def _targets(self, op: str, params: Mapping[str, Any]) -> list[tuple[str, str]]:
        if "TransactItems" in params:
            out = []
            for entry in params["TransactItems"]:
                ((kind, body),) = entry.items()
                action = TRANSACT.get(kind, "ConditionCheckItem" if kind != "Get" else "GetItem")
                out.append((action, body["TableName"]))
            return out
        if "RequestItems" in params:
            return [(op, table) for table in params["RequestItems"]]
        if "TableName" in params:
            return [(op, params["TableName"])]
        return [(op, str(params.get("StreamArn") or params.get("QueueUrl") or "?"))]

    def attach(self, clients: AwsClients) -> AwsClients:
        for client in (clients.dynamodb, clients.streams, clients.ssm):
            client.meta.events.register("before-parameter-build", self.hook)
        return clients


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return cfn.load()


def recording(
    migration: Migration, monkeypatch: pytest.MonkeyPatch
) -> tuple[Calls, Callable[..., AwsClients]]:
    s = migration.settings
    calls = Calls(
        {
            s.source_table: "source",
            s.destination_table: "destination",
            s.control_table: "control",
        }
    )
    real = aws.make_clients

    def make_clients(*args: Any, **kwargs: Any) -> AwsClients:
        return calls.attach(real(*args, **kwargs))

    monkeypatch.setattr(aws, "make_clients", make_clients)
    return calls, make_clients


def check(template: dict[str, Any], role: str, calls: Calls) -> None:
    grants = granted(template, role)
    assert calls.seen, "nothing was recorded"
    assert calls.seen <= grants, f"{role} lacks {sorted(calls.seen - grants)}"
    unused = grants - calls.seen - NOT_THE_CODE[role]
    assert not unused, f"{role} grants what its code never calls: {sorted(unused)}"
    # the managed policy for running livemigrate from a machine (control-table.yaml) covers
    # the same code paths
    allowed = managed_grants()
    assert calls.seen <= allowed, f"control-table.yaml lacks {sorted(calls.seen - allowed)}"


def managed_grants() -> set[Grant]:
    managed = cfn.load(cfn.INFRA / "control-table.yaml")
    statements = managed["Resources"]["LivemigratePolicy"]["Properties"]["PolicyDocument"]
    return {
        (action, resource_kind(resource))
        for statement in statements["Statement"]
        for resource in _listed(statement["Resource"])
        for action in statement["Action"]
    }


def test_the_managed_policy_grants_every_table_action_a_function_role_grants(
    template: dict[str, Any],
) -> None:
    # the same code runs from a machine (`livemigrate consume`, `reverse`, `backfill`) under
    # the managed policy of control-table.yaml: e.g. the writer's marked deletes (UpdateItem on
    # the destination) and the reverse consumer's writes to the source
    tables = {"source", "destination", "control"}
    needed = {
        grant for role in NOT_THE_CODE for grant in granted(template, role) if grant[1] in tables
    }
    missing = needed - managed_grants()
    assert not missing, f"control-table.yaml lacks {sorted(missing)}"


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_the_roles_are_attached_to_their_functions(template: dict[str, Any]) -> None:
    for function, role in FUNCTIONS.items():
        props = template["Resources"][function]["Properties"]
        assert props["Role"] == {"Fn::GetAtt": [role, "Arn"]}


def test_consumer_role_grants_exactly_the_consumer_calls(
    clients: AwsClients, monkeypatch: pytest.MonkeyPatch, template: dict[str, Any]
) -> None:
    migration = new_migration(clients, monkeypatch)
    calls, _ = recording(migration, monkeypatch)
    table = migration.settings.source_table
    mapping = StreamMapping(clients, table, lambda_handler.handler)
    # puts, an update, a record the transform rejects (dead letter), a delete before the
    # backfill completed (a tombstone) and after it (a real delete), a watermark
    put(clients, table, "a", 1)
    put(clients, table, "a", 2)
    clients.dynamodb.put_item(TableName=table, Item=to_typed({"pk": "x", "sk": "no-date"}))
    clients.dynamodb.delete_item(
        TableName=table, Key=to_typed({"pk": "section-outbox|docket", "sk": "a"})
    )
    mapping.drain()
    migration.store.put("PLAN", {"state": "complete", "completed_at": 1.0})
    put(clients, table, "b", 1)
    mark = watermark_item(migration.source, "t")
    clients.dynamodb.put_item(TableName=table, Item=mark)
    clients.dynamodb.delete_item(
        TableName=table, Key=to_typed({"pk": "section-outbox|docket", "sk": "b"})
    )
    mapping.drain()
    check(template, "ConsumerRole", calls)


def test_backfill_role_grants_exactly_the_backfill_calls(
    clients: AwsClients, monkeypatch: pytest.MonkeyPatch, template: dict[str, Any]
) -> None:
    migration = new_migration(clients, monkeypatch)
    for n in range(15):
        put(clients, migration.settings.source_table, f"i{n}", n)
    migration.store.put("CONSUMER#source", {"started_at": 1.0, "mode": "lambda"})
    calls, make_clients = recording(migration, monkeypatch)
    recorded = make_clients(migration.settings)
    plan = backfill_lambda.invoke(
        {"action": "plan", "workers": 1}, Context(60), migration.settings, recorded
    )
    for worker in plan["workers"]:
        event = {"action": "work", "worker": worker, "page_size": 5, "margin_seconds": 0.5}
        assert backfill_lambda.invoke(event, Context(30), migration.settings, recorded)["complete"]
    check(template, "BackfillRole", calls)


def test_search_role_grants_exactly_the_search_calls(
    clients: AwsClients, monkeypatch: pytest.MonkeyPatch, template: dict[str, Any]
) -> None:
    migration = new_migration(clients, monkeypatch)
    alias = unique("iam").lower()
    monkeypatch.setenv("LIVEMIGRATE_SEARCH_URL", ES_URL)
    monkeypatch.setenv("LIVEMIGRATE_SEARCH_ALIAS", alias)
    calls, _ = recording(migration, monkeypatch)
    dest = migration.settings.destination_table
    clients.dynamodb.put_item(TableName=dest, Item=to_typed({"pk": "p", "sk": "1", "n": 1}))
    clients.dynamodb.delete_item(TableName=dest, Key=to_typed({"pk": "p", "sk": "1"}))
    clients.dynamodb.put_item(TableName=dest, Item=to_typed({"pk": "p", "sk": "2", "n": 1}))
    StreamMapping(clients, dest, lambda_handler.search_handler).drain()
    from elasticsearch import Elasticsearch

    Elasticsearch(ES_URL).indices.delete(index=f"{alias}-*", ignore_unavailable=True)
    check(template, "SearchRole", calls)


def test_reverse_role_grants_exactly_the_reverse_calls(
    clients: AwsClients, monkeypatch: pytest.MonkeyPatch, template: dict[str, Any]
) -> None:
    migration = new_migration(clients, monkeypatch)
    monkeypatch.setenv("LIVEMIGRATE_INVERSE_TRANSFORM", "livemigrate.examples.hot_outbox:inverse")
    source, dest = migration.settings.source_table, migration.settings.destination_table
    # the forward consumer copied two items; after the cutover the application changes the
    # destination: one update, one delete
    put(clients, source, "a", 1)
    put(clients, source, "b", 1)
    StreamMapping(clients, source, lambda_handler.handler).drain()
    migration.store.put("PLAN", {"state": "complete", "completed_at": 1.0})
    flags = ControlFlagStore(migration.store, source, dest)
    flag = flags.read()
    flags.write(flag.flipped("destination", time.time(), time.time()), flag.epoch)
    copied = {str(i["sk"]["S"]): i for i in scan_all(clients.dynamodb, dest)}
    changed = user_attributes(to_plain(copied["a"]))
    clients.dynamodb.put_item(TableName=dest, Item=to_typed({**changed, "n": 5}))
    clients.dynamodb.delete_item(TableName=dest, Key={k: copied["b"][k] for k in ("pk", "sk")})
    calls, _ = recording(migration, monkeypatch)
    StreamMapping(clients, dest, lambda_handler.reverse_handler).drain()
    back = {str(i["sk"]["S"]): to_plain(i) for i in scan_all(clients.dynamodb, source)}
    assert back["a"]["n"] == 5 and "b" not in back
    check(template, "ReverseRole", calls)
