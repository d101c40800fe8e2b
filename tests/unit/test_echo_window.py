"""Issue 10, item 10: forward deletes need no mark before a cutover; the time window holds.

GIVEN a cutover that arms the flag at A, waits ``ARM_WAIT`` and flips at F (after any fence),
forward deletes decided unmarked on a flag read before A and sent within ``MARK_VALIDITY`` of
that read, application writes made at or after F, DynamoDB's stream times floored to the second
and its clock off ours by up to ``CLOCK_SKEW``; THEN the reverse consumer takes every such
forward delete for the forward consumer's (skips it by time) and never an application write.
"""

from __future__ import annotations

import math

from hypothesis import example, given
from hypothesis import strategies as st

from livemigrate.clock import FakeClock
from livemigrate.flag import FlagView
from livemigrate.records import CLOCK_SKEW, StreamRecord
from livemigrate.replication import ARM_WAIT, MARK_VALIDITY, DeleteMarking, before_activation
from tests.support.flags import INITIAL, MemoryFlags

ARM = 1_000_000.25  # the arm, on the cutover's clock


def stamped(true_time: float, skew: float) -> StreamRecord:
    """A stream record as DynamoDB stamps a change made at ``true_time``."""
    keys = {"pk": {"S": "a"}}
    return StreamRecord("REMOVE", keys, None, keys, "1".zfill(40), math.floor(true_time + skew))


# The worst case: read just before the arm, sent at the end of its validity, flipped at once,
# DynamoDB's clock ahead by the whole skew.
LATEST_SEND = MARK_VALIDITY - 1e-6


@example(0.0, LATEST_SEND, 0.0, CLOCK_SKEW, 0.25)
@example(0.0, LATEST_SEND, 0.0, CLOCK_SKEW, 0.75)
@given(
    read_before_arm=st.floats(min_value=0.0, max_value=30.0),
    sent_after_read=st.floats(min_value=0.0, max_value=MARK_VALIDITY, exclude_max=True),
    fence_and_drain=st.floats(min_value=0.0, max_value=60.0),
    skew=st.floats(min_value=-CLOCK_SKEW, max_value=CLOCK_SKEW),
    arm_fraction=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
)
def test_an_unmarked_forward_delete_is_always_made_before_the_flip(
    read_before_arm: float,
    sent_after_read: float,
    fence_and_drain: float,
    skew: float,
    arm_fraction: float,
) -> None:
    arm = math.floor(ARM) + arm_fraction
    flip = arm + ARM_WAIT + fence_and_drain
    flag = INITIAL.armed(arm).flipped("destination", flip)
    landed = arm - read_before_arm + sent_after_read
    assert before_activation(flag, stamped(landed, skew))


@given(
    after_flip=st.floats(min_value=0.0, max_value=3600.0),
    skew=st.floats(min_value=-CLOCK_SKEW, max_value=CLOCK_SKEW),
)
def test_an_application_change_after_the_flip_is_never_taken_for_a_forward_one(
    after_flip: float, skew: float
) -> None:
    flip = ARM + ARM_WAIT
    flag = INITIAL.armed(ARM).flipped("destination", flip)
    assert not before_activation(flag, stamped(flip + after_flip, skew))


def test_before_any_cutover_every_destination_change_is_a_forward_one() -> None:
    assert before_activation(INITIAL, stamped(ARM + 10_000, 0.0))


def test_a_rollback_keeps_when_the_destination_became_active() -> None:
    cut = INITIAL.armed(ARM).flipped("destination", ARM + ARM_WAIT)
    back = cut.flipped("source", ARM + 100)
    assert back.destination_since == cut.destination_since
    assert back.marks_since == 0.0  # forward deletes need no marks again


def test_marking_follows_the_flag_and_bounds_unmarked_deletes_in_time() -> None:
    clock = FakeClock()
    flags = MemoryFlags(INITIAL)
    marking = DeleteMarking(FlagView(flags, clock))
    mark, fence = marking.decide()
    assert not mark and fence is not None
    assert fence.deadline == clock.monotonic() + MARK_VALIDITY
    clock.advance(MARK_VALIDITY / 2 - 0.1)
    marking.decide()
    assert flags.reads == 1  # fresh enough: no new read
    flags.flag = INITIAL.armed(clock.now())
    clock.advance(0.2)
    mark, fence = marking.decide()
    assert (mark, fence, flags.reads) == (True, None, 2)
