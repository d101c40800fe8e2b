"""Live control against moto through the CLI: throttle, pause and resume, postpone, hooks."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from livemigrate.aws import AwsClients
from livemigrate.control import ControlStore
from livemigrate.exitcodes import ExitCode
from livemigrate.flag import ControlFlagStore
from tests.services import create_table, unique
from tests.support.backfill import destination, fill, outbox_items
from tests.support.cutover import Heartbeat, ready_store
from tests.support.operator import environment, finish, start


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


# -- unattended cutover and hooks ----------------------------------------------------------------
def cutover_env(store: ControlStore, hooks: dict[str, str] | None = None) -> dict[str, str]:
    return environment(
        LIVEMIGRATE_MIGRATION_ID=store.migration_id,
        LIVEMIGRATE_SOURCE_TABLE="orders",
        LIVEMIGRATE_DESTINATION_TABLE="orders_v2",
        LIVEMIGRATE_CONTROL_TABLE=store.table,
        LIVEMIGRATE_HOOKS=json.dumps(hooks or {}),
    )


def read_until(proc: subprocess.Popen[str], text: str) -> str:
    """Lines of the process's stdout up to the first one containing ``text``."""
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError(f"{text!r} never printed: {''.join(seen)}")


def hook_env(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.startswith("LM_HOOK_"))


def test_postponed_cutover_waits_for_the_flag_file_and_runs_the_hooks(
    clients: AwsClients, tmp_path: Path
) -> None:
    """GIVEN every gate met and a postpone file WHEN `cutover --postpone-until-flag FILE` runs
    THEN it waits without flipping; once the file is removed it cuts over, and the gates_pass
    and cutover_done hooks run with the migration's facts in their environment."""
    store = ready_store(clients)
    marker = tmp_path / "postpone"
    marker.touch()
    hooks = {
        "gates_pass": f"env > {tmp_path / 'gates.env'}",
        "cutover_done": f"env > {tmp_path / 'done.env'}",
    }
    args = ["cutover", "--postpone-until-flag", str(marker), "--check-every", "0.2"]
    with Heartbeat(store):
        proc = start(args, cutover_env(store, hooks))
        read_until(proc, "postponed while")
        assert ControlFlagStore(store).read().active == "source"
        assert not (tmp_path / "done.env").exists()
        marker.unlink()
        code, out, err = finish(proc)
    assert code == ExitCode.OK, out + err
    assert ControlFlagStore(store).read().active == "destination"
    done = hook_env(tmp_path / "done.env")
    assert done["LM_HOOK_EVENT"] == "cutover_done"
    assert done["LM_HOOK_MIGRATION_ID"] == store.migration_id
    assert (done["LM_HOOK_ACTIVE_TABLE"], done["LM_HOOK_EPOCH"]) == ("orders_v2", "1")
    assert hook_env(tmp_path / "gates.env")["LM_HOOK_SOURCE_TABLE"] == "orders"


def test_cutover_when_gates_pass_waits_for_the_last_gate(clients: AwsClients) -> None:
    """GIVEN a failed verification WHEN `cutover --when-gates-pass` runs THEN it waits, naming
    the unmet gate; once a passing verification is recorded it cuts over by itself."""
    store = ready_store(clients)
    store.update("VERIFY", {"passed": False, "missing": 2})
    with Heartbeat(store):
        proc = start(["cutover", "--when-gates-pass", "--check-every", "0.2"], cutover_env(store))
        read_until(proc, "gates unmet: verification passed")
        assert ControlFlagStore(store).read().active == "source"
        store.update("VERIFY", {"passed": True, "missing": 0, "at": time.time()})
        code, out, err = finish(proc)
    assert code == ExitCode.OK, out + err
    assert ControlFlagStore(store).read().active == "destination"
    # and back, as a script would: only JSON on stdout
    code, out, err = finish(start(["rollback", "--json"], cutover_env(store)))
    assert code == ExitCode.OK, out + err
    result = json.loads(out)
    assert (result["outcome"], result["flag"]["active"]) == ("OK", "source")
    assert result["flag"]["flipped_at"].endswith("+00:00") and result["flag"]["epoch"] == 2


def test_a_wait_that_times_out_changes_nothing(clients: AwsClients) -> None:
    store = ready_store(clients)
    store.update("VERIFY", {"passed": False, "missing": 2})
    args = ["cutover", "--when-gates-pass", "--check-every", "0.1", "--wait-timeout", "0.5"]
    code, out, err = finish(start(args, cutover_env(store)))
    assert code == ExitCode.GATES_UNMET, out + err
    assert "gave up after waiting" in out
    assert ControlFlagStore(store).read().epoch == 0


def test_backfill_complete_hook_and_status_watch(clients: AwsClients, tmp_path: Path) -> None:
    """GIVEN a backfill_complete hook WHEN a backfill completes THEN the hook runs once with the
    counts; `status --watch --json` prints one JSON document per refresh."""
    env, _ = started_backfill_env(clients, 30)
    env["LIVEMIGRATE_HOOKS"] = json.dumps({"backfill_complete": f"env >> {tmp_path / 'bf.env'}"})
    code, _, err = finish(start(["backfill", "--without-consumer"], env))
    assert code == ExitCode.OK, err
    fired = hook_env(tmp_path / "bf.env")
    assert (fired["LM_HOOK_EVENT"], fired["LM_HOOK_ITEMS_READ"]) == ("backfill_complete", "30")
    code, out, err = finish(start(["backfill", "--without-consumer", "--json"], env))
    assert code == ExitCode.OK, err
    assert json.loads(out)["outcome"] == "OK" and json.loads(out)["items_read"] == 30
    assert "backfill complete" in err  # the text for people went to stderr
    events = (tmp_path / "bf.env").read_text().count("LM_HOOK_EVENT=")
    assert events == 1, "an already complete backfill does not fire the hook again"

    code, out, err = finish(start(["status", "--watch", "0.1", "--count", "3", "--json"], env))
    assert code == ExitCode.OK, err
    documents = [json.loads(line) for line in out.splitlines()]
    assert len(documents) == 3
    assert all(d["backfill"]["state"] == "complete" for d in documents)
