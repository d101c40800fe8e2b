"""Live control against moto through the CLI: throttle, pause and resume, postpone, hooks."""

from __future__ import annotations

import json

from livemigrate.aws import AwsClients
from livemigrate.control import ControlStore
from livemigrate.exitcodes import ExitCode
from tests.integration.test_backfill_support import destination, fill, outbox_items
from tests.integration.test_operator_errors import environment, finish, start
from tests.services import create_table, unique


def started_backfill_env(clients: AwsClients, items: int) -> tuple[dict[str, str], ControlStore]:
    source, dest = unique("src"), unique("dst")
    create_table(clients.dynamodb, source)
    create_table(clients.dynamodb, dest)
    fill(clients.dynamodb, source, outbox_items(items))
    env = environment(
        LIVEMIGRATE_MIGRATION_ID=unique("mig"),
        LIVEMIGRATE_SOURCE_TABLE=source,
        LIVEMIGRATE_DESTINATION_TABLE=dest,
        LIVEMIGRATE_CONTROL_TABLE=unique("control"),
    )
    store = ControlStore(
        clients.dynamodb, env["LIVEMIGRATE_CONTROL_TABLE"], env["LIVEMIGRATE_MIGRATION_ID"]
    )
    return env, store


def test_throttle_pause_holds_the_backfill_and_resume_lets_it_finish(
    clients: AwsClients,
) -> None:
    """GIVEN a migration WHEN `throttle --pause` is set and a backfill runs for its budget
    THEN at most the one page in flight at the end was copied; status shows PAUSED; after
    `throttle --resume` the next backfill copies everything."""
    env, store = started_backfill_env(clients, 200)
    flags = ["backfill", "--without-consumer", "--workers", "1", "--page-size", "10"]
    code, _, err = finish(start([*flags, "--budget-seconds", "0.5"], env))
    assert code in (ExitCode.OK, ExitCode.INCOMPLETE), err
    before = int(store.metrics().get("items_read", 0))
    assert before < 200, "the first run must leave work for this test"

    code, out, err = finish(start(["throttle", "--pause", "--write-rate", "500", "--json"], env))
    assert code == ExitCode.OK, err
    assert json.loads(out) == {"paused": True, "read_rate": None, "write_rate": 500}
    code, out, _ = finish(start(["status"], env))
    assert "rates: read from settings, write 500/s; PAUSED" in out

    code, _, err = finish(start([*flags, "--budget-seconds", "4"], env))
    assert code == ExitCode.INCOMPLETE, err
    assert int(store.metrics().get("items_read", 0)) - before <= 10  # the page in flight

    code, out, err = finish(start(["throttle", "--resume"], env))
    assert code == ExitCode.OK and "PAUSED" not in out, err
    code, out, err = finish(start(flags, env))
    assert code == ExitCode.OK, err
    assert len(destination(clients.dynamodb, env["LIVEMIGRATE_DESTINATION_TABLE"])) == 200


def test_throttle_refuses_a_negative_rate_and_an_unstarted_migration(
    clients: AwsClients,
) -> None:
    env, _ = started_backfill_env(clients, 1)
    code, _, err = finish(start(["throttle", "--read-rate", "-1"], env))
    assert code == ExitCode.BAD_INPUT and "must be 0 (no cap) or more" in err
    code, _, err = finish(start(["throttle", "--pause"], env))
    assert code == ExitCode.BAD_INPUT and "nothing has run" in err
    assert "Traceback" not in err
