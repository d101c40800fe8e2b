"""Stream consumer: ordered, lease-coordinated apply of DynamoDB Streams (issue 4).

Modules: ``source`` (shard source protocol, boto3 implementation), ``scripted`` (an in-memory
stream with shard splits, for tests), ``lineage`` (parent-before-child), ``leases`` (KCL-style
shard leases and checkpoints), ``engine`` (the loop; ``run_consumer``), ``applier`` (the S -> D
``RecordSink``), ``tombstones`` (finalisation), ``metrics`` (Prometheus text), ``lambda_handler``,
``cli`` (``livemigrate consume``).
"""
