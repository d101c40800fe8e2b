"""Who gets a destination key that another source item holds (ARCHITECTURE.md rule 12).

A stream put from source item u is refused when the key is owned by another item v
(``DestinationWriter.claim``). Sequence numbers of u and v come from different shards and order
nothing, so the source decides, read now with consistent reads (the source is at least as new
as every record applied so far):

- v's last word on the key was a removal (a tombstone or a delete mark): hand the key over;
- v is absent, or its current version no longer maps to the key: hand the key over, on the
  condition that the key still holds exactly what was read (``claim(replacing=held)``);
- v still maps to the key, and so does u now: a genuine collision (two live source items map
  to one destination key): the record is dead-lettered, never raced;
- v still maps to the key and u no longer does: this record is older than u's current state,
  whose own records follow on u's shard; the put is skipped.

A version that fails the transform maps nowhere (its record is dead-lettered on its own).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from livemigrate.destination import Held
from livemigrate.errors import TransformOutputError
from livemigrate.items import TypedItem, key_id, to_plain
from livemigrate.ownership import SourceReader, key_from_id, owner_id
from livemigrate.transform import Transformer


class Verdict(enum.Enum):
    HAND_OVER = "hand_over"
    SKIP = "skip"
    COLLISION = "collision"


class Collision(Exception):
    """Two live source items map to one destination key: the record cannot be applied."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class Handoff:
    """Decides a refused claim by reading the source (see the module docstring).

    Parameters
    ----------
    read_source:
        The source item by its key, now (consistent read), or None.
    transformer:
        The migration's transform (``_lm_*`` attributes are stripped by ``Transformer.run``).
    key_names:
        The destination's key attribute names.
    """

    read_source: SourceReader
    transformer: Transformer
    key_names: tuple[str, ...]

    def verdict(self, key: TypedItem, claimant: TypedItem, held: Held) -> Verdict:
        """What to do with ``claimant``'s put at ``key``, which ``held`` occupies."""
        if held.removed:
            return Verdict.HAND_OVER  # the holder's last word on this key was a removal
        holder = None if held.owner is None else key_from_id(held.owner)
        kid = key_id(key)
        # An owner that cannot be read back cannot be proved gone: treat it as still mapping.
        if holder is not None and not self.maps_to(holder, kid):
            return Verdict.HAND_OVER
        return Verdict.COLLISION if self.maps_to(claimant, kid) else Verdict.SKIP

    def maps_to(self, source_key: TypedItem, kid: str) -> bool:
        """Whether the source item at ``source_key`` now maps to the destination key ``kid``."""
        item = self.read_source(source_key)
        if item is None:
            return False
        try:
            outputs = self.transformer.run(to_plain(item))
        except TransformOutputError:
            return False
        return any(key_id({name: out[name] for name in self.key_names}) == kid for out in outputs)


def collision_reason(key: TypedItem, claimant: TypedItem, held: Held) -> str:
    """The dead letter's reason: both source keys and the destination key."""
    return (
        f"collision: source items {owner_id(claimant)} and {held.owner} both map to destination "
        f"key {key_id(key)}; the key stays with {held.owner} (fix the data or the transform)"
    )
