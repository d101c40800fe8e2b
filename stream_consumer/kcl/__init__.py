"""The Kinesis Client Library (KCL) engine: ``livemigrate consume --engine kcl``.

For a Kinesis change source read by many machines, the KCL spreads the shards over workers,
keeps its own leases and checkpoints (a DynamoDB table named after the application), and hands
each shard to a record processor. Its MultiLangDaemon (Java, from the optional extra
``livemigrate[kcl]``: amazon-kclpy 3.1.3) runs one processor process per shard and talks to it
over stdin/stdout.

- ``daemon``: writes the daemon's properties, launches it, passes SIGTERM on.
- ``processor``: the project's record processor, the same applier as the built-in consumer
  (``stream_consumer.applier``): records are applied, then checkpointed; a shard's end is
  checkpointed so its children start; after a lost lease nothing more is written.
"""
