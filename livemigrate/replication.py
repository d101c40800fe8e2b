"""Two replication directions between the same two tables, and what keeps them from looping.

After the cutover the application writes the destination (D). A reverse consumer applies D's
stream to the source (S) through an inverse transform, so that ``livemigrate rollback`` loses
nothing, while the forward consumer keeps applying S's stream to D. Each consumer's writes show
up on the other's stream; applied again, they would bounce between the tables forever (and an
echoed delete could remove an item the application had written again meanwhile).

So each direction marks what it writes, and each consumer skips the other's marks. The idea is
the one DynamoDB's first cross-region replication used (a replicator's own attributes on the
item, and a "being deleted" mark set just before a replicated delete):

- a write by a consumer stamps the item with its sequence attribute: ``_lm_seq`` (forward, the
  source stream's sequence number) or ``_lm_rseq`` (reverse, the destination stream's);
- a consumer's delete first marks the item (``_lm_del`` / ``_lm_rdel``, same stamp), then
  deletes it on that mark, so the delete's stream record carries the mark in its OldImage;
- a stream record is an echo of a consumer when its NewImage holds that consumer's delete mark
  or a stamp strictly newer than its OldImage's (a consumer only ever writes a newer stamp), or
  when it is a REMOVE whose OldImage holds the delete mark;
- the forward consumer also hands a key from one source item to another (rule 12): the stamps
  of two items come from different shards and may go down, so a NewImage recording another
  owner (``_lm_src``) than its OldImage is the forward consumer's too.

An application's write never looks like an echo: a put of its own item carries no stamp, an
update keeps the stamp it found (equal, not newer), and a delete of an unmarked item carries no
mark. ``tests/unit/test_replication.py`` checks both sides of that with hypothesis.

Marks cost a second write per delete, and the forward consumer needs them only around the
cutover (issue 10, item 10). The application writes the destination only once the flag names
it, so every change of the destination made before that (``Flag.destination_since``) is the
forward consumer's or the backfill's: the reverse consumer skips it by time
(``before_activation``), marked or not. Forward deletes are marked only from the moment a
cutover arms the flag (``Flag.marks_since``) until the flip back. A forward process decides
"unmarked" on a flag read at most ``MARK_VALIDITY / 2`` old and must send the delete within
``MARK_VALIDITY`` of that read (a ``livemigrate.fencing.Fence``); the cutover waits ``ARM_WAIT``
between arming and fencing, so every unmarked forward delete was made certainly before the
flip, and every delete near or after it carries a mark.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from livemigrate.fencing import Fence, Window
from livemigrate.flag import Flag, FlagView
from livemigrate.records import CLOCK_SKEW, STREAM_TIME_PRECISION, StreamRecord
from livemigrate.versioning import (
    DELETE_ATTR,
    OWNER_ATTR,
    REVERSE_DELETE_ATTR,
    REVERSE_SEQ_ATTR,
    SEQ_ATTR,
    TOMBSTONE_ATTR,
)


@dataclass(frozen=True)
class Marks:
    """The attributes one direction stamps on what it writes."""

    direction: str
    seq_attr: str
    delete_attr: str
    tombstone_attr: str | None = None  # only the forward direction writes tombstones
    owner_attr: str | None = None  # only forward items record their source item (rule 12)


FORWARD: Final = Marks("forward", SEQ_ATTR, DELETE_ATTR, TOMBSTONE_ATTR, OWNER_ATTR)
REVERSE: Final = Marks("reverse", REVERSE_SEQ_ATTR, REVERSE_DELETE_ATTR)


def _string(image: Mapping[str, Any] | None, name: str) -> str | None:
    if not image or name not in image:
        return None
    value = image[name]
    return str(value.get("S")) if isinstance(value, Mapping) and "S" in value else None


def _flagged(image: Mapping[str, Any] | None, name: str | None) -> bool:
    if not image or name is None or name not in image:
        return False
    value = image[name]
    return isinstance(value, Mapping) and value.get("BOOL") is True


def written_by(marks: Marks, record: StreamRecord) -> bool:
    """Whether the consumer that stamps ``marks`` made this change (an echo to skip)."""
    if record.new_image is None:
        old = record.old_image
        return _flagged(old, marks.delete_attr) or _flagged(old, marks.tombstone_attr)
    new = record.new_image
    if _flagged(new, marks.delete_attr) or _flagged(new, marks.tombstone_attr):
        return True
    new_owner = None if marks.owner_attr is None else _string(new, marks.owner_attr)
    if new_owner is not None and new_owner != _string(record.old_image, marks.owner_attr or ""):
        return True
    new_seq = _string(new, marks.seq_attr)
    if new_seq is None:
        return False
    old_seq = _string(record.old_image, marks.seq_attr)
    return old_seq is None or new_seq > old_seq


MARK_VALIDITY: Final = 2.0
# Between arming and fencing: an unmarked delete decided just before the arm lands, and its
# stream time (rounded down, skewed) is then certainly before the flip.
ARM_WAIT: Final = MARK_VALIDITY + STREAM_TIME_PRECISION + CLOCK_SKEW + 0.5


def before_activation(flag: Flag, record: StreamRecord) -> bool:
    """A change of the destination certainly made before it became the active table: a forward
    consumer's (or the backfill's), never the application's."""
    return flag.destination_since == 0 or record.made_before(flag.destination_since)


class DeleteMarking:
    """Whether the forward consumer marks its deletes now, and until when an unmarked one may
    be sent (see the module docstring)."""

    def __init__(self, view: FlagView, validity: float = MARK_VALIDITY) -> None:
        self.view = view
        self.validity = validity

    def decide(self) -> tuple[bool, Fence | None]:
        """(mark, fence): the fence bounds when unmarked deletes may still be sent."""
        flag, read_at = self.view.fresh(self.validity / 2)
        if flag.marks_since:
            return True, None
        return False, Window(self.view.clock, read_at + self.validity, "unmarked deletes")
