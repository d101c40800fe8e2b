"""Hypothesis: a destination key handed between source items on different shards (rule 12).

The migration is a by-email lookup table (``livemigrate.examples.by_email``): the destination
key comes from the ``email`` attribute, so one shared address passes from user to user. The
users live on different shards of a ``ScriptedStream`` whose shards number their records
independently (``seq_offsets``: either shard's numbers may be the higher ones), so sequence
numbers of two users order nothing.

A scenario is a history of source writes (a user takes the shared address while nobody holds
it, gives it up for a private one, is updated, deleted, or gets an address the transform
refuses and later a valid one again) interleaved with the consumer applying each shard's
records in batches (either shard lagging arbitrarily), with crashes before the checkpoint (the
batch comes again), in tombstone mode, real-delete mode, or switching between them, and
optionally a backfill that read the source at one step and writes that stale copy
(put-if-absent, owner recorded) at a later one. The real
``DestinationApplier`` reads the source as it is when it applies (never older than the records
it applied). Expected: the destination equals the transform of the final source exactly, and
the only dead letters are the records whose new image the transform refuses.

``ModelWriter`` (tests/support/consumer_model.py) holds the destination here;
tests/integration/test_consumer_handoff.py runs the same scenarios against moto.
"""

from __future__ import annotations

from hypothesis import example, given, settings

from tests.support.consumer_model import ModelWriter
from tests.support.handoff import Scenario, play, scenarios

# u0 (shard 0, numbering 8 records higher) gives the address up, u1 (shard 1) takes it; the
# tombstone u0 leaves has the higher sequence number.
GIVE_AND_TAKE = Scenario(
    offsets=(8, 0),
    steps=[("write", 0, 0, False), ("write", 0, 1, False), ("write", 1, 0, False)],
    mode="tombstones",
    switch_at=0,
)

# u0 takes the address and gets a refused one; u2 (same shard) takes it; u0 is fixed: in one
# batch u2's put and the removal derived from u0's remembered keys meet on one key and must
# both run, in order (not be folded into the newest).
HANDED_WITHIN_A_BATCH = Scenario(
    offsets=(0, 0),
    steps=[("write", 0, 0, False), ("write", 2, 1, False), ("write", 2, 0, False)],
    mode="tombstones",
    switch_at=0,
    third=0,
)


@settings(max_examples=300)
@example(GIVE_AND_TAKE)
@example(HANDED_WITHIN_A_BATCH)
@given(scenarios())
def test_a_key_handed_between_shards_ends_as_the_transform_of_the_source(s: Scenario) -> None:
    writer = ModelWriter()
    h = play(s, writer, lambda: iter(writer.tombstones()))
    assert writer.visible() == h.expected()
    assert all(reason.startswith("transform failed") for reason in h.dead), h.dead
    assert h.ownership.collisions == 0
