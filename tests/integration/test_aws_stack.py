"""infra/aws/livemigrate.yaml created in moto's CloudFormation (issue 15): the functions are
created (moto would need Docker to invoke them, which these tests never do) and the wiring is
checked: the event source mappings' options, the state machine's definition, the roles attached
to the right functions. cfn-lint checks the templates in ``make lint``."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest

from livemigrate.aws import AwsClients
from tests import cfn
from tests.services import create_table, unique

WORKERS = 12
CONCURRENCY = 6


@dataclass
class Stack:
    name: str
    outputs: dict[str, str]
    resources: dict[str, str]  # logical id -> physical id
    source_stream: str
    destination_stream: str


def code_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("stream_consumer/lambda_handler.py", "def handler(event, context): ...\n")
    return buffer.getvalue()


def parameters(values: dict[str, Any]) -> list[dict[str, str]]:
    return [{"ParameterKey": k, "ParameterValue": str(v)} for k, v in values.items()]


@pytest.fixture(scope="module")
def stack(clients: AwsClients) -> Iterator[Stack]:
    source, dest, bucket = unique("src"), unique("dst"), unique("code")
    create_table(clients.dynamodb, source)
    create_table(clients.dynamodb, dest)
    arn = {
        t: clients.dynamodb.describe_table(TableName=t)["Table"]["LatestStreamArn"]
        for t in (source, dest)
    }
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="livemigrate-lambda.zip", Body=code_zip())
    cloudformation = boto3.client("cloudformation")
    name = unique("livemigrate")
    values = {
        "MigrationId": unique("mig"),
        "SourceTableName": source,
        "DestinationTableName": dest,
        "SourceStreamArn": arn[source],
        "DestinationStreamArn": arn[dest],
        "Transform": "livemigrate.examples.hot_outbox:transform",
        "InverseTransform": "livemigrate.examples.hot_outbox:inverse",
        "CodeBucket": bucket,
        "ParallelizationFactor": 1,
        "SearchUrl": "https://search.example.internal",
        "SearchAlias": "orders",
        "BackfillWorkers": WORKERS,
        "MaxConcurrency": CONCURRENCY,
        "MapMode": "DISTRIBUTED",
    }
    cloudformation.create_stack(
        StackName=name,
        TemplateBody=cfn.STACK.read_text(),
        Parameters=parameters(values),
        Capabilities=["CAPABILITY_IAM"],
    )
    desc = cloudformation.describe_stacks(StackName=name)["Stacks"][0]
    assert desc["StackStatus"] == "CREATE_COMPLETE", desc.get("StackStatusReason")
    listed = cloudformation.list_stack_resources(StackName=name)["StackResourceSummaries"]
    yield Stack(
        name,
        {o["OutputKey"]: o["OutputValue"] for o in desc.get("Outputs", [])},
        {r["LogicalResourceId"]: r["PhysicalResourceId"] for r in listed},
        arn[source],
        arn[dest],
    )
    lam = boto3.client("lambda")
    for function in ("ConsumerFunction", "SearchFunction", "ReverseFunction"):
        mappings = lam.list_event_source_mappings(FunctionName=listed_name(listed, function))
        for mapping in mappings["EventSourceMappings"]:
            lam.delete_event_source_mapping(UUID=mapping["UUID"])
    cloudformation.delete_stack(StackName=name)
    for table in (source, dest):
        clients.dynamodb.delete_table(TableName=table)


def listed_name(listed: list[Any], logical: str) -> str:
    return next(str(r["PhysicalResourceId"]) for r in listed if r["LogicalResourceId"] == logical)


def mapping_of(stack: Stack, function: str) -> dict[str, Any]:
    lam = boto3.client("lambda")
    found = lam.list_event_source_mappings(FunctionName=stack.resources[function])
    (mapping,) = found["EventSourceMappings"]
    return dict(mapping)


def test_consumer_mapping_never_drops_a_record_and_reports_item_failures(stack: Stack) -> None:
    mapping = mapping_of(stack, "ConsumerFunction")
    assert mapping["EventSourceArn"] == stack.source_stream
    assert mapping["StartingPosition"] == "TRIM_HORIZON"
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["BisectBatchOnFunctionError"] is True
    assert mapping["ParallelizationFactor"] == 1
    assert (mapping["MaximumRetryAttempts"], mapping["MaximumRecordAgeInSeconds"]) == (-1, -1)
    queue = mapping["DestinationConfig"]["OnFailure"]["Destination"]
    assert queue.startswith("arn:aws:sqs:")
    # the queue the gate reads is that one
    url = stack.outputs["FailureQueueUrl"]
    attrs = boto3.client("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    assert attrs["Attributes"]["QueueArn"] == queue


def test_search_and_reverse_functions_read_the_destination_stream(stack: Stack) -> None:
    for function in ("SearchFunction", "ReverseFunction"):
        mapping = mapping_of(stack, function)
        assert mapping["EventSourceArn"] == stack.destination_stream
        assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
        assert (mapping["MaximumRetryAttempts"], mapping["MaximumRecordAgeInSeconds"]) == (-1, -1)


def test_each_function_runs_its_handler_under_its_own_role(stack: Stack) -> None:
    lam, iam = boto3.client("lambda"), boto3.client("iam")
    handlers = {
        "ConsumerFunction": ("stream_consumer.lambda_handler.handler", "ConsumerRole"),
        "BackfillFunction": ("backfill.lambda_handler.handler", "BackfillRole"),
        "SearchFunction": ("stream_consumer.lambda_handler.search_handler", "SearchRole"),
        "ReverseFunction": ("stream_consumer.lambda_handler.reverse_handler", "ReverseRole"),
    }
    roles = set()
    for function, (handler, role) in handlers.items():
        config = lam.get_function(FunctionName=stack.resources[function])["Configuration"]
        assert config["Handler"] == handler
        assert config["Runtime"] == "python3.12"
        role_arn = iam.get_role(RoleName=stack.resources[role])["Role"]["Arn"]
        assert config["Role"] == role_arn
        roles.add(role_arn)
    assert len(roles) == len(handlers)  # one role per function


def test_state_machine_plans_then_loops_each_worker_until_complete(stack: Stack) -> None:
    sfn = boto3.client("stepfunctions")
    desc = sfn.describe_state_machine(stateMachineArn=stack.outputs["BackfillStateMachineArn"])
    definition = json.loads(desc["definition"])
    backfill = boto3.client("lambda").get_function(
        FunctionName=stack.resources["BackfillFunction"]
    )["Configuration"]["FunctionArn"]
    plan = definition["States"][definition["StartAt"]]
    assert plan["Parameters"]["FunctionName"] == backfill
    assert plan["Parameters"]["Payload"] == {"action": "plan", "workers": WORKERS}
    workers = definition["States"][plan["Next"]]
    assert workers["Type"] == "Map" and workers["MaxConcurrency"] == CONCURRENCY
    assert workers["ItemProcessor"]["ProcessorConfig"]["Mode"] == "DISTRIBUTED"
    inner = workers["ItemProcessor"]["States"]
    work = inner[workers["ItemProcessor"]["StartAt"]]
    assert work["Parameters"]["Payload"]["action"] == "work"
    retried = {e for r in work["Retry"] for e in r["ErrorEquals"]}
    assert {"Lambda.TooManyRequestsException", "Lambda.ServiceException"} <= retried
    assert work["ResultSelector"] == {
        "complete.$": "$.Payload.complete",
        "blocked.$": "$.Payload.blocked",
    }
    choice = inner[work["Next"]]
    done, blocked = choice["Choices"]
    assert done["Variable"] == "$.result.complete" and inner[done["Next"]]["Type"] == "Succeed"
    # an export whose remaining files are all refused ends the loop as a failure, not forever
    assert blocked["Variable"] == "$.result.blocked" and blocked["BooleanEquals"] is True
    refused = inner[blocked["Next"]]
    assert refused["Type"] == "Fail" and "livemigrate export start" in refused["Cause"]
    assert choice["Default"] == workers["ItemProcessor"]["StartAt"]  # loop until complete
    # the state machine may invoke the backfill function (its role's one Lambda grant)
    role = boto3.client("iam").get_role(RoleName=stack.resources["BackfillStateMachineRole"])
    assert desc["roleArn"] == role["Role"]["Arn"]
