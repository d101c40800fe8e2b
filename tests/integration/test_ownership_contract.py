"""One contract for the ownership records: the in-memory ones of the hand-off scenarios
(``tests.support.handoff.MemoryOwnership``) and the control table's ``OwnershipRecords``.

The applier remembers which destination keys a source item owned before a version the
transform refused, and reads them back when a later version of that item arrives (rule 12).
Both run the cases below. Not in the contract: ``count_collision`` (the fake counts in a field,
the real one adds to the migration's counters, which tests/integration/test_consumer_handoff.py
reads through ``livemigrate status``).
"""

from __future__ import annotations

import pytest

from livemigrate.aws import AwsClients
from livemigrate.control import ControlStore
from livemigrate.items import to_typed
from livemigrate.ownership import OwnershipRecords
from tests.services import unique
from tests.support.handoff import MemoryOwnership

K1 = to_typed({"pk": "by-email|a@example.com", "sk": "user"})
K2 = to_typed({"pk": "by-email|b@example.com", "sk": "user"})
# Source keys can be long (the control table holds a digest of them in its sort key).
LONG_OWNER = "users~" + "x" * 1500


@pytest.fixture(scope="module")
def control_table(clients: AwsClients) -> str:
    """One control table for the module; each case is a migration of its own in it."""
    table = unique("control")
    ControlStore(clients.dynamodb, table, "none").ensure_table()
    return table


@pytest.fixture(params=["memory", "control-table"])
def records(request: pytest.FixtureRequest) -> OwnershipRecords:
    if request.param == "memory":
        return MemoryOwnership()
    clients = request.getfixturevalue("clients")
    table = request.getfixturevalue("control_table")
    return OwnershipRecords(ControlStore(clients.dynamodb, table, unique("mig")))


def test_an_owner_never_remembered_owns_nothing(records: OwnershipRecords) -> None:
    assert records.owned("users~u1") == []


def test_the_keys_last_remembered_are_the_ones_read_back(records: OwnershipRecords) -> None:
    records.remember("users~u1", [K1, K2], "0005")
    records.remember("users~u2", [K2], "0006")
    assert records.owned("users~u1") == [K1, K2]
    records.remember("users~u1", [K2], "0007")
    assert records.owned("users~u1") == [K2], "a later remember replaces the keys"
    records.remember("users~u1", [], "0008")
    assert records.owned("users~u1") == []
    assert records.owned("users~u2") == [K2], "owners are kept apart"


def test_long_owners_and_numeric_keys_round_trip(records: OwnershipRecords) -> None:
    numeric = to_typed({"pk": 12345678901234567890123456789012345678, "sk": "n"})
    records.remember(LONG_OWNER, [numeric, K1], "0009")
    assert records.owned(LONG_OWNER) == [numeric, K1]
    assert records.owned(LONG_OWNER[:-1]) == []


# Found by this suite: ``OwnershipRecords.remember`` stored keys with ``items.to_json`` (binary
# as hex) and ``owned`` read them with ``ownership.key_from_id``, which expects ``key_id``'s
# canonical form (binary as base64): a binary key came back as other bytes.


@pytest.mark.parametrize("records", ["memory", "control-table"], indirect=True)
def test_binary_keys_round_trip(records: OwnershipRecords) -> None:
    binary = to_typed({"pk": "by-hash", "sk": b"\x00\xff"})
    records.remember("users~u3", [binary], "0010")
    assert records.owned("users~u3") == [binary]
