"""No traceback for a user's mistake or a service being down (issue 12), run as a user would.

Every command is run as a subprocess (``python -m livemigrate.cli``): with the AWS endpoint and
the search node on closed ports, with the control table missing, and with each mistake the
issue lists. Each must end with one message and the documented ``ExitCode``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from livemigrate.aws import AwsClients
from livemigrate.control import ControlStore
from livemigrate.exitcodes import ExitCode
from tests.services import ES_URL, create_table, unique
from tests.support.backfill import fill, outbox_items
from tests.support.operator import environment, finish, start


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def migration_env(control: str, **extra: str) -> dict[str, str]:
    values = {
        "LIVEMIGRATE_MIGRATION_ID": unique("mig"),
        "LIVEMIGRATE_SOURCE_TABLE": unique("src"),
        "LIVEMIGRATE_DESTINATION_TABLE": unique("dst"),
        "LIVEMIGRATE_CONTROL_TABLE": control,
    }
    return environment(**{**values, **extra})


INVERSE = ["--inverse-transform", "livemigrate.examples.hot_outbox:inverse"]
EVERY_COMMAND: list[list[str]] = [
    ["status"],
    ["status", "--json"],
    ["backfill"],
    ["consume", "--until-caught-up"],
    ["reverse", "--until-caught-up", *INVERSE],
    ["verify"],
    ["cutover"],
    ["cutover", "--dry-run"],
    ["cutover", "--fenced"],
    ["rollback"],
    ["search", "sync", "--until-caught-up"],
    ["search", "resync"],
    ["search", "swap-alias"],
    ["search", "cleanup"],
]


def test_every_command_with_the_services_down_says_so_without_a_traceback() -> None:
    """GIVEN the AWS endpoint and the search node on closed ports WHEN each command runs
    THEN each exits UNREACHABLE with one message naming the endpoint, never a traceback."""
    env = migration_env(
        unique("control"),
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{closed_port()}",
        LIVEMIGRATE_SEARCH_URL=f"http://127.0.0.1:{closed_port()}",
        LIVEMIGRATE_SEARCH_ALIAS="orders",
    )
    running = [(args, start(args, env)) for args in EVERY_COMMAND]  # concurrently: they wait
    for args, proc in running:
        code, _, err = finish(proc)
        assert "Traceback" not in err, (args, err)
        assert code == ExitCode.UNREACHABLE, (args, code, err)
        assert "did not answer" in err or "unreachable" in err, (args, err)
        assert "make services" not in err, (args, err)  # a developer's hint, not production's


@pytest.fixture
def tables(clients: AwsClients) -> Iterator[tuple[str, str]]:
    source, destination = unique("src"), unique("dst")
    create_table(clients.dynamodb, source)
    create_table(clients.dynamodb, destination)
    yield source, destination


# A command that only reads must not create the control table; the others may.
MISSING_CONTROL: list[tuple[list[str], ExitCode]] = [
    (["status"], ExitCode.OK),
    (["status", "--json"], ExitCode.OK),
    (["verify"], ExitCode.BAD_INPUT),
    (["cutover", "--dry-run"], ExitCode.BAD_INPUT),
    (["cutover"], ExitCode.BAD_INPUT),
    (["cutover", "--fenced"], ExitCode.BAD_INPUT),
    (["rollback"], ExitCode.BAD_INPUT),
]


def test_every_command_with_the_control_table_missing_names_the_first_step(
    clients: AwsClients, tables: tuple[str, str]
) -> None:
    """GIVEN tables but no control table WHEN each read-only command runs THEN each ends with
    its documented code and no traceback, and none of them created the control table."""
    control = unique("control")
    source, destination = tables
    env = migration_env(
        control,
        LIVEMIGRATE_SOURCE_TABLE=source,
        LIVEMIGRATE_DESTINATION_TABLE=destination,
        LIVEMIGRATE_SEARCH_URL=ES_URL,
        LIVEMIGRATE_SEARCH_ALIAS=unique("lmerr").lower(),
    )
    running = [(args, want, start(args, env)) for args, want in MISSING_CONTROL]
    for args, want, proc in running:
        code, _, err = finish(proc)
        assert "Traceback" not in err, (args, err)
        assert code == want, (args, code, err)
        if want == ExitCode.BAD_INPUT:
            assert "livemigrate consume" in err, (args, err)  # the first step of a migration
    assert not ControlStore(clients.dynamodb, control, "x").exists()
    # The commands that start a migration do create it, and backfill says what comes first.
    code, _, err = finish(start(["backfill"], env))
    assert (code, "Traceback" in err) == (ExitCode.BAD_INPUT, False), err
    assert "livemigrate consume" in err


def test_a_toml_syntax_error_names_the_file_and_the_line(tmp_path: Path) -> None:
    config = tmp_path / "livemigrate.toml"
    config.write_text('migration_id = "a"\nsource_table = orders\n')
    code, _, err = finish(start(["status"], environment(LIVEMIGRATE_CONFIG=str(config))))
    assert code == ExitCode.BAD_INPUT
    assert str(config) in err and "line 2" in err
    assert "Traceback" not in err


def test_a_bad_log_level_is_refused_with_the_choices() -> None:
    code, _, err = finish(start(["--log-level", "verbose", "status"], environment()))
    assert code == ExitCode.BAD_INPUT
    assert "invalid choice: 'VERBOSE'" in err and "DEBUG" in err
    assert "Traceback" not in err


def test_status_into_a_closed_pipe_ends_quietly(moto_url: str) -> None:
    """GIVEN `livemigrate status | head -n 0` (the reader leaves at once) THEN no
    BrokenPipeError traceback and exit 0."""
    env = migration_env(unique("control"))
    script = (
        f"{sys.executable} -m livemigrate.cli status 2>err.txt | head -n 0; "
        'echo "${PIPESTATUS[0]}" > code.txt'
    )
    subprocess.run(["bash", "-c", script], env=env, cwd=env_dir(env), check=True, timeout=60)
    folder = Path(env["LM_TEST_DIR"])
    assert "Traceback" not in (folder / "err.txt").read_text()
    assert (folder / "code.txt").read_text().strip() == "0"


def env_dir(env: dict[str, str]) -> str:
    folder = Path(os.environ.get("TMPDIR", "/tmp")) / unique("lmpipe")
    folder.mkdir()
    env["LM_TEST_DIR"] = str(folder)
    return str(folder)


def test_a_metrics_port_in_use_is_one_message(clients: AwsClients, tables: tuple[str, str]) -> None:
    source, destination = tables
    env = migration_env(
        unique("control"),
        LIVEMIGRATE_SOURCE_TABLE=source,
        LIVEMIGRATE_DESTINATION_TABLE=destination,
    )
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        code, _, err = finish(start(["consume", "--until-caught-up", "--metrics-port", port], env))
    assert code == ExitCode.BAD_INPUT, err
    assert f"metrics port {port} is already in use" in err
    assert "Traceback" not in err


def test_verify_and_cutover_with_the_search_node_down(
    clients: AwsClients, tables: tuple[str, str]
) -> None:
    """GIVEN a started migration whose search node is down WHEN verify and cutover run THEN
    both exit UNREACHABLE naming Elasticsearch, without a traceback."""
    source, destination = tables
    control = unique("control")
    env = migration_env(
        control,
        LIVEMIGRATE_SOURCE_TABLE=source,
        LIVEMIGRATE_DESTINATION_TABLE=destination,
        LIVEMIGRATE_SEARCH_URL=f"http://127.0.0.1:{closed_port()}",
        LIVEMIGRATE_SEARCH_ALIAS="orders",
    )
    store = ControlStore(clients.dynamodb, control, env["LIVEMIGRATE_MIGRATION_ID"])
    store.ensure_table()
    store.put("META", {"source_table": source, "destination_table": destination})
    for args in (["verify"], ["cutover", "--dry-run"]):
        code, _, err = finish(start(args, env))
        assert "Traceback" not in err, (args, err)
        assert code == ExitCode.UNREACHABLE, (args, code, err)
        assert "Elasticsearch did not answer" in err, (args, err)


@pytest.mark.parametrize("processes", ["1", "2"])
def test_ctrl_c_during_backfill_stops_soon_saves_the_position_and_status_says_stopped(
    clients: AwsClients, tables: tuple[str, str], processes: str
) -> None:
    """GIVEN a backfill capped at 50 writes/s per process over 3000 items (30 s or more)
    WHEN it (the parent alone, with --processes 2) gets Ctrl-C while it copies THEN it exits
    INTERRUPTED long before the work could have ended, says the position is saved, releases
    every lease, and status shows the workers stopped."""
    source, destination = tables
    fill(clients.dynamodb, source, outbox_items(3000))
    control = unique("control")
    env = migration_env(
        control,
        LIVEMIGRATE_SOURCE_TABLE=source,
        LIVEMIGRATE_DESTINATION_TABLE=destination,
        LIVEMIGRATE_WRITE_RATE="50",
    )
    store = ControlStore(clients.dynamodb, control, env["LIVEMIGRATE_MIGRATION_ID"])
    flags = ["--without-consumer", "--page-size", "50", "--processes", processes]
    proc = start(["backfill", *flags], env)  # the signal goes to this process only
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if store.exists() and int(store.metrics().get("items_read", 0)) > 0:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    signalled = time.monotonic()
    code, _, err = finish(proc, timeout=60)
    took = time.monotonic() - signalled

    assert code == ExitCode.INTERRUPTED, err
    assert took < 20, f"the backfill went on for {took:.0f}s after Ctrl-C"
    assert "position saved" in err
    assert "Traceback" not in err and "cannot schedule new futures" not in err
    segments = [item for _, item in store.query("SEG#")]
    assert segments and not any(item.get("lease_owner") for item in segments)
    code, out, err = finish(start(["status"], env))
    assert code == ExitCode.OK, err
    assert "backfill stopped: no worker is running" in out
    assert "workers stopped" in out


def test_backfill_and_verify_do_not_go_green_while_items_are_missing(
    clients: AwsClients, tables: tuple[str, str]
) -> None:
    """GIVEN a transform that fails on every 7th item WHEN `backfill && verify` runs THEN
    backfill exits NOT_MIGRATED (the chain stops), and verify alone exits NOT_MIGRATED too,
    although what did transform is at parity."""
    source, destination = tables
    fill(clients.dynamodb, source, outbox_items(40))
    env = migration_env(
        unique("control"),
        LIVEMIGRATE_SOURCE_TABLE=source,
        LIVEMIGRATE_DESTINATION_TABLE=destination,
        LIVEMIGRATE_TRANSFORM="tests.support.backfill:raising_transform",
    )
    code, out, err = finish(start(["backfill", "--without-consumer", "--workers", "2"], env))
    assert code == ExitCode.NOT_MIGRATED, err
    assert "dead letters 6" in out and "NOT in the destination" in err
    code, out, err = finish(start(["verify", "--no-search"], env))
    assert code == ExitCode.NOT_MIGRATED, out + err
    assert "PARITY" in out and "6 source item(s) fail the transform" in err


def test_consume_warns_when_the_search_sink_would_find_no_destination_stream(
    clients: AwsClients,
) -> None:
    """GIVEN search configured and a destination without a stream WHEN consume starts THEN
    it warns that the search sink reads the destination's stream, naming the table."""
    source, destination = unique("src"), unique("dst")
    create_table(clients.dynamodb, source)
    create_table(clients.dynamodb, destination, stream=None)
    env = migration_env(
        unique("control"),
        LIVEMIGRATE_SOURCE_TABLE=source,
        LIVEMIGRATE_DESTINATION_TABLE=destination,
        LIVEMIGRATE_SEARCH_URL=ES_URL,
        LIVEMIGRATE_SEARCH_ALIAS="orders",
    )
    code, _, err = finish(start(["consume", "--until-caught-up", "--poll-interval", "0.1"], env))
    assert code == ExitCode.OK, err
    assert f"the destination table {destination} has no stream" in err
    assert "the search sink (`livemigrate search sync`)" in err
