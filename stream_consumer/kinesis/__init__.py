"""Kinesis Data Streams as a change source: a table's Kinesis streaming destination.

- ``records``: one Kinesis record -> ``livemigrate.records.StreamRecord`` (the version rule for
  records that may arrive out of order and more than once);
- ``source``: the built-in reader, a ``ShardSource`` over Kinesis (ListShards,
  GetShardIterator, GetRecords);
- ``bridge``: copies a table's DynamoDB stream into a Kinesis stream in the same record format
  (moto lacks the streaming destination), optionally duplicating and reordering records.
"""
