"""Hypothesis: padded sequence numbers order like the integers they are."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from livemigrate.versioning import BACKFILL_SEQ, is_newer, pad_seq

# DynamoDB stream sequence numbers are 21 to 40 digits.
seqs = st.integers(min_value=10**20, max_value=10**40 - 1).map(str)


@given(seqs, seqs)
def test_padded_order_is_numeric_order(a: str, b: str) -> None:
    assert (pad_seq(a) < pad_seq(b)) == (int(a) < int(b))
    assert is_newer(pad_seq(a), pad_seq(b)) == (int(a) > int(b))


@given(seqs)
def test_every_stream_record_beats_the_backfill_and_replays_are_no_ops(a: str) -> None:
    assert is_newer(pad_seq(a), BACKFILL_SEQ)
    assert not is_newer(BACKFILL_SEQ, pad_seq(a))
    assert not is_newer(pad_seq(a), pad_seq(a))
    assert is_newer(pad_seq(a), None)


def test_pad_seq_refuses_what_is_not_a_sequence_number() -> None:
    for bad in ("", "12a", "1" * 41):
        try:
            pad_seq(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} was accepted")
