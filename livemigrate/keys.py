"""The control table's keys, declared once (the item layout is described in livemigrate.control).

Every module that reads or writes a control-table item names its key through this module, so a
key is spelled in one place and a misspelling is a missing attribute, not a silent new item.
Stored keys never change: existing control tables must keep working.
"""

from __future__ import annotations

from typing import Final

# -- partition keys ----------------------------------------------------------------------------


def migration_pk(migration_id: str) -> str:
    """The partition holding every item of one migration."""
    return f"MIG#{migration_id}"


def destination_pk(table: str) -> str:
    """The partition recording which migration writes a destination table (sort key OWNER)."""
    return f"DEST#{table}"


# -- single items of a migration (sort keys) ---------------------------------------------------

META: Final = "META"  # the migration spec
PLAN: Final = "PLAN"  # the backfill plan
RATES: Final = "RATES"  # live read/write caps
TOMBSTONES: Final = "TOMBSTONES"  # tombstone purge state
SEARCH: Final = "SEARCH"  # search sink targets
CUTOVER: Final = "CUTOVER"  # the last cutover
ROLLBACK: Final = "ROLLBACK"  # the last rollback
VERIFY: Final = "VERIFY"  # the last verification
FLAG: Final = "FLAG"  # the cutover flag
FLAG_LOCK: Final = "FLAGLOCK"  # the fenced-write lock beside the flag
METRICS: Final = "METRICS"  # counters and request units
RETENTION: Final = "RETENTION"  # the retention guard's last verdict
OWNER: Final = "OWNER"  # under destination_pk: the migration that owns the destination

# -- families of items (sort-key prefixes, and the keys of their members) ----------------------

CONSUMER_PREFIX: Final = "CONSUMER#"  # stream consumers: source, search, reverse


def consumer(name: str) -> str:
    """A stream consumer's item."""
    return f"{CONSUMER_PREFIX}{name}"


CONSUMER_SOURCE: Final = consumer("source")
CONSUMER_REVERSE: Final = consumer("reverse")
SHARD_PREFIX: Final = "SHARD#"  # shard leases and checkpoints, per consumer


def shard_prefix(consumer_name: str) -> str:
    """The prefix of one consumer's shard leases."""
    return f"{SHARD_PREFIX}{consumer_name}#"


def shard(consumer_name: str, shard_id: str) -> str:
    return shard_prefix(consumer_name) + shard_id


SEG_PREFIX: Final = "SEG#"  # backfill segments (and an export plan's files)
SPLIT_PREFIX: Final = "SPLIT#"  # hot-key sub-ranges of a segment
UNIT_PREFIXES: Final = (SEG_PREFIX, SPLIT_PREFIX)  # every backfill unit, segments first


def segment(n: int) -> str:
    """A backfill segment (zero-padded, so sort keys sort by number), and its splits' prefix."""
    return f"{SEG_PREFIX}{n:06d}"


def split_prefix(segment_n: int) -> str:
    return f"{SPLIT_PREFIX}{segment_n:06d}#"


def split(segment_n: int, n: int) -> str:
    """One hot-key split of a segment."""
    return split_prefix(segment_n) + str(n)


EXPORT_PREFIX: Final = "EXPORT#"  # exports requested by `export start`, by export id
DLQ_PREFIX: Final = "DLQ#"  # dead letters
CODE_PREFIX: Final = "CODE#"  # transform code a process loaded
WATERMARK_PREFIX: Final = "WATERMARK#"  # Lambda mode's watermark tokens
OWNED_PREFIX: Final = "OWNED#"  # destination keys a source item owns (rule 12)


def export(export_id: str) -> str:
    return EXPORT_PREFIX + export_id


def kind(sk: str) -> str:
    """The family of a sort key: ``CONSUMER#source`` -> ``CONSUMER``, ``PLAN`` -> ``PLAN``."""
    return sk.split("#", 1)[0]
