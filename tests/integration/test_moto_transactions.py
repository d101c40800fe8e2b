"""The emulator the tests run on cancels DynamoDB transactions as DynamoDB does.

moto's own ``TransactWriteItems`` replaces every table a cancelled transaction names with a copy
taken before it started; open stream iterators then read a stream that never grows again, and
writes made meanwhile are lost. ``infra/services.sh`` runs moto through ``infra/moto_server.py``,
which cancels a transaction before it copies or writes anything. These tests fail on moto's
unpatched server (checked: they fail with ``moto_server``).
"""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from livemigrate.aws import AwsClients
from tests.services import StreamTail, create_table, unique

pytestmark = pytest.mark.integration

KEY = {"pk": {"S": "a"}, "sk": {"S": "b"}}


def cancelled(clients: AwsClients, table: str) -> None:
    with pytest.raises(ClientError) as caught:
        clients.dynamodb.transact_write_items(
            TransactItems=[
                {"Put": {"TableName": table, "Item": {**KEY, "v": {"S": "never"}}}},
                {
                    "ConditionCheck": {
                        "TableName": table,
                        "Key": {"pk": {"S": "absent"}, "sk": {"S": "x"}},
                        "ConditionExpression": "attribute_exists(pk)",
                    }
                },
            ]
        )
    reasons = caught.value.response["CancellationReasons"]
    assert [r["Code"] for r in reasons] == ["None", "ConditionalCheckFailed"]


def test_a_cancelled_transaction_writes_nothing_and_leaves_the_stream_readable(
    clients: AwsClients,
) -> None:
    table = unique("tx")
    create_table(clients.dynamodb, table)
    tail = StreamTail(clients, table)
    clients.dynamodb.put_item(TableName=table, Item={**KEY, "v": {"S": "1"}})
    assert [r.event_name for r in tail.poll()] == ["INSERT"]
    cancelled(clients, table)
    held = clients.dynamodb.get_item(TableName=table, Key=KEY, ConsistentRead=True)["Item"]
    assert held["v"] == {"S": "1"}
    clients.dynamodb.put_item(TableName=table, Item={**KEY, "v": {"S": "2"}})
    # The iterator opened before the cancelled transaction still sees what came after it.
    assert [r.new_image["v"] for r in tail.poll() if r.new_image] == [{"S": "2"}]
