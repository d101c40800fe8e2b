"""botocore's retry modes under the tool's own rules (issue 19, item 6).

Every client takes the ``retry_mode`` setting (standard or adaptive). The adaptive mode waits
for its client-side rate limit in a generic ``before-send`` handler, which botocore calls after
the handlers of ``before-send.dynamodb.PutItem``: the fence must be checked after that wait, or
a write held there leaves after the lease's deadline (rule 11).
"""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError, ParamValidationError

from livemigrate import fencing
from livemigrate.aws import AwsClients, make_clients
from livemigrate.clock import FakeClock
from livemigrate.fencing import Fence, LeaseExpired
from tests.services import create_table, settings_for, unique

pytestmark = pytest.mark.integration


def test_every_client_takes_the_retry_mode_setting(clients: AwsClients) -> None:
    assert retry_mode(clients.dynamodb) == "standard"
    adaptive = make_clients(settings_for("src", "dst", retry_mode="adaptive"))
    for client in (adaptive.dynamodb, adaptive.streams, adaptive.ssm, adaptive.kinesis):
        assert client is not None
        assert retry_mode(client) == "adaptive"


def test_only_the_dynamodb_client_skips_botocores_parameter_validation(
    clients: AwsClients,
) -> None:
    # GIVEN the tool's clients: its DynamoDB requests are built from checked input (issue 18)
    # WHEN a request botocore's model refuses (a Scan limit of 0) goes to DynamoDB
    # THEN it is sent, and the service itself answers
    with pytest.raises(ClientError) as refused:
        clients.dynamodb.scan(TableName=unique("absent"), Limit=0)
    assert refused.value.response["Error"]["Code"] in (
        "ValidationException",
        "ResourceNotFoundException",
    )
    # AND the other clients still validate before sending
    with pytest.raises(ParamValidationError, match="valid min value: 1"):
        clients.streams.describe_stream(StreamArn="arn:aws:dynamodb:x", Limit=0)


def retry_mode(client: Any) -> str:
    # botocore-stubs do not declare Config.retries; botocore sets it from the Config given.
    retries: dict[str, Any] = client.meta.config.retries
    return str(retries["mode"])


def test_a_write_held_by_a_rate_limit_wait_past_its_deadline_is_refused(
    clients: AwsClients,
) -> None:
    """GIVEN an adaptive client with a fence installed and a ``before-send`` handler that
    waits past the fence's deadline (as the adaptive rate limiter's token wait does) WHEN a
    guarded put is sent THEN the fence refuses it and nothing is written."""
    table = unique("fenced")
    create_table(clients.dynamodb, table)
    client = make_clients(settings_for("src", "dst", retry_mode="adaptive")).dynamodb
    clock = FakeClock()
    fence = Fence(clock, clock.monotonic() + 10, "lease SEG#000001")
    fencing.install(client)

    def rate_limit_wait(**_: Any) -> None:
        clock.advance(30)  # the token bucket held the request past the deadline

    client.meta.events.register("before-send", rate_limit_wait)
    key = {"pk": {"S": "user|1"}, "sk": {"S": "x"}}
    with fencing.guarded(fence), pytest.raises(LeaseExpired):
        client.put_item(TableName=table, Item=key)
    assert "Item" not in clients.dynamodb.get_item(TableName=table, Key=key, ConsistentRead=True)


def test_reads_and_unguarded_writes_pass_the_fence_hook(clients: AwsClients) -> None:
    """The hook sits on every request of the client now: only guarded writes are checked."""
    table = unique("fenced")
    create_table(clients.dynamodb, table)
    client = make_clients(settings_for("src", "dst", retry_mode="adaptive")).dynamodb
    clock = FakeClock()
    fencing.install(client)
    key = {"pk": {"S": "user|2"}, "sk": {"S": "x"}}
    client.put_item(TableName=table, Item=key)  # no fence guards this thread
    with fencing.guarded(Fence(clock, clock.monotonic() - 1, "expired lease")):
        got = client.get_item(TableName=table, Key=key, ConsistentRead=True)  # a read
        with pytest.raises(LeaseExpired):
            client.delete_item(TableName=table, Key=key)
    assert got["Item"] == key
