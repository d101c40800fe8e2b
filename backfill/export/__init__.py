"""Backfill from a DynamoDB export in S3 (issue 16): no read capacity consumed.

``livemigrate export start`` requests the export; ``livemigrate backfill --from-export`` plans one
unit per data file of its manifest and loads the files through the Scan backfill's transform,
put-if-absent writer, leases, checkpoints, budgets, rate caps, dead letters and fencing.
"""
