"""The version rule (ARCHITECTURE.md rules 1-3), as pure functions that hypothesis can test.

Every destination item carries the source stream sequence number that produced it, zero-padded
to 40 digits so that string comparison orders it (stream sequence numbers are 21-40 digits: too
long for a DynamoDB number or an Elasticsearch version). The backfill writes ``BACKFILL_SEQ``,
which is older than any stream record.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, TypeVar

V = TypeVar("V")

SEQ_WIDTH: Final = 40
BACKFILL_SEQ: Final = "0" * SEQ_WIDTH

# Reserved attribute names on destination items. Transforms may not produce ``_lm_*`` names.
SEQ_ATTR: Final = "_lm_seq"
TOMBSTONE_ATTR: Final = "_lm_tomb"
MIGRATION_ATTR: Final = "_lm_mid"
# The source item a forward destination item came from (``livemigrate.ownership.owner_id`` of
# its key): removals and puts of other source items are decided by it (rule 12).
OWNER_ATTR: Final = "_lm_src"
RESERVED_PREFIX: Final = "_lm_"


def is_reserved(name: str) -> bool:
    """Whether an attribute name is livemigrate's own (``_lm_*``), never the application's."""
    return name.startswith(RESERVED_PREFIX)


def user_attributes(item: Mapping[str, V]) -> dict[str, V]:
    """The item without livemigrate's reserved ``_lm_*`` attributes: what the application
    wrote, as transforms, digests and search documents see it."""
    return {k: v for k, v in item.items() if not is_reserved(k)}


def pad_seq(sequence_number: str) -> str:
    """A stream sequence number in its ordered string form."""
    if not sequence_number.isdigit() or len(sequence_number) > SEQ_WIDTH:
        raise ValueError(f"not a stream sequence number: {sequence_number!r}")
    return sequence_number.zfill(SEQ_WIDTH)


def is_newer(incoming: str, held: str | None) -> bool:
    """Whether an event at ``incoming`` may overwrite what the destination holds at ``held``.

    Equal is not newer: replaying the same record is a no-op.
    """
    return held is None or incoming > held


def backfill_may_write(held: str | None) -> bool:
    """Put-if-absent: the backfill writes only where nothing, not even a tombstone, is held."""
    return held is None


# A consumer's delete marks the item first, then deletes it on that mark, so the other
# direction can tell its own records from echoes (see livemigrate.replication).
DELETE_ATTR: Final = "_lm_del"
# What the reverse consumer (destination -> source, after the cutover) stamps on source items.
REVERSE_SEQ_ATTR: Final = "_lm_rseq"
REVERSE_DELETE_ATTR: Final = "_lm_rdel"
