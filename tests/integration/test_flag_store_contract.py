"""One contract for the flag stores: the in-memory one, the control-table item and SSM.

The unit tests drive the client library, the consumers' flag view, the echo window and the
reverse consumer with ``tests.support.flags.MemoryFlags``; cutover and rollback use
``ControlFlagStore`` or ``SsmFlagStore`` on moto. Every case below runs over all three, so what
the fake does (the initial flag, the compare-and-set on the epoch, every field stored as
written) is what the real stores do. Each case opens two handles on the same flag (two
processes): a change made through one is what the other reads and races against.

Not in the contract: ``MemoryFlags.script`` (scripted reads, a fake's tool) and the SSM
store's detection of a writer outside livemigrate (tests/integration/test_cutover_gates.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from livemigrate.aws import AwsClients
from livemigrate.control import ControlStore
from livemigrate.flag import ControlFlagStore, Flag, FlagConflict, FlagStore, SsmFlagStore
from tests.services import unique
from tests.support.flags import INITIAL, MemoryFlags

STORES = ["memory", "control", "ssm"]

# A handle on one flag; every call opens another handle on the same flag.
Opener = Callable[[], FlagStore]


@pytest.fixture(scope="module")
def control_table(clients: AwsClients) -> str:
    """One control table for the module; each case is a migration of its own in it."""
    table = unique("control")
    ControlStore(clients.dynamodb, table, "none").ensure_table()
    return table


@pytest.fixture(params=STORES)
def open_flags(request: pytest.FixtureRequest) -> Opener:
    """Handles on one fresh flag whose tables are ``INITIAL``'s."""
    if request.param == "memory":
        memory = MemoryFlags(INITIAL)
        return lambda: memory
    clients = request.getfixturevalue("clients")
    table = request.getfixturevalue("control_table")
    store = ControlStore(clients.dynamodb, table, unique("mig"))
    source, destination = INITIAL.source_table, INITIAL.destination_table
    if request.param == "control":
        return lambda: ControlFlagStore(store, source, destination)
    return lambda: SsmFlagStore(clients.ssm, store, source, destination)


def test_an_unwritten_flag_reads_as_the_initial_one_at_epoch_0(open_flags: Opener) -> None:
    flags = open_flags()
    assert flags.read() == INITIAL
    assert INITIAL.epoch == 0 and INITIAL.active == "source" and INITIAL.table == "orders"
    assert open_flags().read() == INITIAL  # reading wrote nothing


def test_a_write_bumps_the_epoch_and_every_handle_reads_it_back(open_flags: Opener) -> None:
    writer, reader = open_flags(), open_flags()
    fenced = INITIAL.armed(1_700_000_000.25).fence(1_700_000_001.5, 30.125)
    stored = writer.write(fenced, 0)
    assert stored == replace(fenced, epoch=1)
    assert reader.read() == stored  # every field, floats exactly
    flipped = stored.flipped("destination", 1_700_000_002.75)
    assert writer.write(flipped, 1) == replace(flipped, epoch=2)
    assert reader.read() == replace(flipped, epoch=2)
    assert reader.read().table == "orders_v2"


def test_the_epoch_of_the_written_flag_is_the_stores_not_the_callers(open_flags: Opener) -> None:
    flags = open_flags()
    assert flags.write(replace(INITIAL, epoch=41), 0).epoch == 1
    assert open_flags().read().epoch == 1


def test_a_write_on_a_stale_epoch_is_refused_and_changes_nothing(open_flags: Opener) -> None:
    first, second = open_flags(), open_flags()
    read_by_both = first.read()
    assert second.read() == read_by_both
    won = first.write(read_by_both.fence(100.0, 10.0), read_by_both.epoch)
    with pytest.raises(FlagConflict):
        second.write(read_by_both.flipped("destination", 101.0), read_by_both.epoch)
    assert second.read() == won == open_flags().read()
    with pytest.raises(FlagConflict):  # an epoch from the future is as wrong as an old one
        second.write(won.unfence(), won.epoch + 3)
    assert open_flags().read() == won


def test_a_flip_back_keeps_the_tables_and_counts_every_change(open_flags: Opener) -> None:
    flags = open_flags()
    flag = flags.read()
    steps: list[Callable[[Flag], Flag]] = [
        lambda f: f.fence(10.0, 5.0),
        lambda f: f.flipped("destination", 11.0),
        lambda f: f.flipped("source", 12.0),
    ]
    for n, step in enumerate(steps, start=1):
        flag = flags.write(step(flag), flag.epoch)
        assert flag.epoch == n
    back = open_flags().read()
    assert back == flag
    assert (back.active, back.table, back.fenced) == ("source", "orders", False)
    assert (back.source_table, back.destination_table) == ("orders", "orders_v2")
    assert back.destination_since == 11.0 and back.flipped_at == 12.0
