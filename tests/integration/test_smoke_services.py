"""GIVEN the real local services WHEN we use them as livemigrate will THEN they behave as AWS/ES."""

from __future__ import annotations

from elasticsearch import Elasticsearch

from livemigrate.aws import AwsClients
from tests.services import create_table, unique


def test_moto_table_with_new_and_old_images_stream_delivers_the_record(
    clients: AwsClients,
) -> None:
    table = unique("smoke")
    create_table(clients.dynamodb, table)
    clients.dynamodb.put_item(
        TableName=table, Item={"pk": {"S": "a"}, "sk": {"S": "1"}, "v": {"N": "7"}}
    )
    clients.dynamodb.update_item(
        TableName=table,
        Key={"pk": {"S": "a"}, "sk": {"S": "1"}},
        UpdateExpression="SET v = :v",
        ExpressionAttributeValues={":v": {"N": "8"}},
    )
    arn = clients.dynamodb.describe_table(TableName=table)["Table"]["LatestStreamArn"]
    shard = clients.streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]
    iterator = clients.streams.get_shard_iterator(
        StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    records = clients.streams.get_records(ShardIterator=iterator)["Records"]

    assert [r["eventName"] for r in records] == ["INSERT", "MODIFY"]
    modify = records[1]["dynamodb"]
    assert modify["OldImage"]["v"] == {"N": "7"}
    assert modify["NewImage"]["v"] == {"N": "8"}
    assert int(records[0]["dynamodb"]["SequenceNumber"]) < int(modify["SequenceNumber"])


def test_elasticsearch_node_indexes_and_searches_a_document(es_url: str) -> None:
    es = Elasticsearch(es_url, request_timeout=30)
    index = unique("smoke")
    es.indices.create(index=index, mappings={"properties": {"title": {"type": "text"}}})
    try:
        es.index(index=index, id="doc-1", document={"title": "hot outbox fixed"}, refresh=True)
        hits = es.search(index=index, query={"match": {"title": "outbox"}})["hits"]
        assert hits["total"]["value"] == 1
        assert hits["hits"][0]["_id"] == "doc-1"
        # The integ-test-zip has no root ("GET /") endpoint; the nodes API tells the version.
        nodes = es.nodes.info()["nodes"]
        assert all(n["version"].startswith("8.") for n in nodes.values())
    finally:
        es.indices.delete(index=index)
