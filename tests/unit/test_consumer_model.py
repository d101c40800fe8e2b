"""Hypothesis: the version and tombstone rules against a simple model of "what D must hold".

A scenario is a random history of puts (some moving the item to another destination key), deletes
and re-puts of a few source items; a backfill that read a stale snapshot at a random point and
writes it at another; the switch to real deletes after the backfill; batches of random size with
crashes before the checkpoint (the batch is applied again) and an optional full replay. The real
``DestinationApplier`` runs it against ``ModelWriter``, an in-memory destination with the same
conditions as ``DestinationWriter``; ``tests/integration/test_consumer_rules_moto.py`` runs the
same scenarios against moto through the real writer. Expected: the latest event wins, deletes are
never undone, and after the purge no tombstone is left.
"""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given

from livemigrate.destination import Outcome
from livemigrate.items import key_id, to_typed
from livemigrate.versioning import pad_seq
from tests.support.consumer_model import ModelWriter, Scenario, expected, play, scenarios


@given(scenarios())
def test_latest_event_wins_and_deletes_are_never_undone(s: Scenario) -> None:
    writer = ModelWriter()
    source = play(s, writer, writer.tombstones)
    assert writer.tombstones() == []
    assert writer.visible() == expected(source)


def test_the_model_refuses_what_the_rules_refuse() -> None:
    # GIVEN a tombstone at seq 5, a backfill put and an older event lose; a newer event wins
    w = ModelWriter()
    key = to_typed({"pk": "p", "sk": "s"})
    assert w.remove(key, pad_seq("5"), tombstone=True) is Outcome.TOMBSTONED
    assert w.put_if_absent({**key, "v": {"N": "1"}}) is Outcome.SUPERSEDED
    assert w.put_if_newer({**key, "v": {"N": "2"}}, pad_seq("4")) is Outcome.STALE
    assert w.put_if_newer({**key, "v": {"N": "3"}}, pad_seq("5")) is Outcome.STALE
    assert w.purge_tombstone(key, pad_seq("4")) is False
    assert w.put_if_newer({**key, "v": {"N": "4"}}, pad_seq("6")) is Outcome.APPLIED
    assert w.purge_tombstone(key, pad_seq("5")) is False  # replaced by a newer write
    assert w.visible() == {key_id(key): {"pk": "p", "sk": "s", "v": Decimal(4)}}
